"""From a YAML file and command-line words to the checked config a recipe receives."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

from tunelib.config import torchtune_names
from tunelib.config.checks import check
from tunelib.config.loading import load_yaml
from tunelib.config.overrides import apply_overrides, parse_overrides
from tunelib.config.schema import schema_fields
from tunelib.errors import ConfigError, UserError, tell


def build_config(path: str | Path, overrides: list[str], schema: type | None):
    """Load `path`, apply `overrides`, fill the schema's defaults, resolve, and check.

    Returns:
        A read-only OmegaConf DictConfig in which every schema key is present, so a recipe
        reads `cfg.key` and an unknown `cfg.typo` raises.

    Raises:
        ConfigError: any problem with the file, an override or the checks.
    """
    from omegaconf import OmegaConf

    cfg = load_yaml(path)
    apply_overrides(cfg, parse_overrides(list(overrides)), schema)
    if schema is not None:
        torchtune_names.fill_checkpoint_dir(cfg, schema_fields(schema))
        for name, info in schema_fields(schema).items():
            if name not in cfg and not info.required:
                cfg[name] = info.default
    plain = resolve(cfg)
    check(plain, schema)
    final = OmegaConf.create(plain)
    OmegaConf.set_struct(final, True)
    OmegaConf.set_readonly(final, True)
    return final


def resolve(cfg) -> dict:
    """Resolve `${...}` interpolations and return plain Python containers.

    Raises:
        ConfigError: an interpolation names a key that does not exist.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        where = f" in '{key}'" if key else ""
        raise ConfigError(f"cannot resolve an interpolation{where}: {str(e).splitlines()[0]}") from None


def split_config_arg(words: list[str]) -> tuple[str, list[str]]:
    """Take `--config PATH` (or `--config=PATH`) out of `words`; return (path, the rest).

    Raises:
        ConfigError: --config is missing or has no value.
    """
    rest, path = [], None
    i = 0
    while i < len(words):
        word = words[i]
        if word == "--config":
            if i + 1 >= len(words):
                raise ConfigError("--config needs a value: a config name from `tune ls` or a YAML path")
            path, i = words[i + 1], i + 2
            continue
        if word.startswith("--config="):
            path = word.split("=", 1)[1]
        else:
            rest.append(word)
        i += 1
    if not path:
        raise ConfigError("the '--config' argument is required: a config name from `tune ls` or a YAML path")
    return path, rest


def run_script(main: Callable[[Any], Any], schema: type | None, argv: list[str] | None = None) -> None:
    """Entry point of a recipe file run as `python recipe.py --config C [overrides]`.

    Bad input exits with code 2 and one line on stderr; the recipe's own return value is the
    exit code otherwise.
    """
    from tunelib.config.components import set_recipe_namespace
    from tunelib import registry

    words = sys.argv[1:] if argv is None else argv
    try:
        name, overrides = split_config_arg(words)
        cfg = build_config(registry.find_config(name), overrides, schema)
    except UserError as e:
        print(f"tune: error: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    set_recipe_namespace(getattr(main, "__globals__", {}))
    sys.exit(run_main(main, cfg))


def run_main(main: Callable[[Any], Any], cfg) -> int:
    """Call a recipe's main; a UserError raised inside becomes one line and its exit code (see `tell`)."""
    show_log_lines()
    try:
        return main(cfg) or 0
    except UserError as e:
        return tell(e)


class _Stdout(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time (a test may swap it between runs)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


def show_log_lines() -> None:
    """Print tunelib's own log lines (the dataset's rows kept and skipped, packing) on stdout,
    once for the job: info from the first process, warnings from every process."""
    logger = logging.getLogger("tunelib")
    if any(isinstance(h, _Stdout) for h in logger.handlers):
        return
    handler = _Stdout()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if int(os.environ.get("RANK", 0)) == 0 else logging.WARNING)
