"""Read a YAML config file into an OmegaConf node, with errors that name the file and line."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

from tunelib.errors import ConfigError


def register_resolvers() -> None:
    """The interpolations tunelib adds to OmegaConf's own.

    ${now:%Y%m%d-%H%M%S}   the time the config is read (Hydra's spelling), for fresh output folders
    ${tunelib_assets:}     the folder of files shipped with tunelib (the demo's model and data)
    """
    from omegaconf import OmegaConf

    # omegaconf 2.4 renamed register_new_resolver; 2.3 has only the old name.
    register = getattr(OmegaConf, "register_resolver", None) or OmegaConf.register_new_resolver
    if not OmegaConf.has_resolver("now"):
        register("now", _now, use_cache=True)
    if not OmegaConf.has_resolver("tunelib_assets"):
        register("tunelib_assets", _assets)


def _now(fmt: str = "%Y-%m-%d_%H-%M-%S") -> str:
    import time

    return time.strftime(fmt)


def _assets() -> str:
    return str(Path(__file__).resolve().parents[1] / "assets")


def load_yaml(path: str | Path):
    """Load a config file.

    Returns:
        An OmegaConf DictConfig (interpolations such as ${output_dir} are kept, not resolved).

    Raises:
        ConfigError: the file is missing, is not YAML, or its top level is not a mapping.
    """
    import yaml
    from omegaconf import DictConfig, OmegaConf

    register_resolvers()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"config {path} must be a YAML file (.yaml or .yml)")
    try:
        cfg = OmegaConf.load(path, **_node_limit())
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}:{where}: malformed YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: malformed YAML: {e}") from None
    except Exception as e:  # omegaconf's own grammar errors (bad interpolation syntax, ...)
        raise ConfigError(f"{path}: cannot read config: {_first_line(e)}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: the top level of a config must be a mapping of keys to values")
    return cfg


# omegaconf >= 2.4 refuses a file of more than 10,000 YAML nodes, counting every node and not
# only those that aliases repeat, so a plain list of 12,000 data files was "malformed". Its
# separate guard against alias bombs (aliases that multiply the nodes 100-fold) stays on.
MAX_YAML_NODES = 10_000_000


def _node_limit() -> dict:
    """OmegaConf.load's node limit, where this omegaconf has one and the user has not set it."""
    from omegaconf import OmegaConf

    if "max_yaml_expanded_nodes" not in inspect.signature(OmegaConf.load).parameters:
        return {}
    if os.environ.get("OMEGACONF_MAX_YAML_EXPANDED_NODES"):
        return {}
    return {"max_yaml_expanded_nodes": MAX_YAML_NODES}


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
