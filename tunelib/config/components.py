"""Build `_component_` nodes, importing only from modules the user allowed.

A YAML file is data, so a shared config must not be able to run arbitrary code (torchtune
#2971). By default a `_component_` may name something in `tunelib`, `torch` or `torchao`
(minus the parts of torch that load or run code), or a bare name defined in the running
recipe's own file. Anything else needs an explicit opt-in outside the YAML:

    tune run --allow-module my_datasets lora_finetune_single_device --config my.yaml
    TUNELIB_ALLOW_MODULES=my_datasets,my_models tune run ...

The working directory is never added to `sys.path`; a module of your own must be importable
(e.g. `PYTHONPATH=.`).
"""

from __future__ import annotations

import importlib
import inspect
import os
import typing
from typing import Any, Callable

from tunelib.errors import ConfigError

ALLOW_ENV = "TUNELIB_ALLOW_MODULES"
DEFAULT_ALLOWED = ("tunelib", "torch", "torchao")
# Parts of torch whose job is to load pickles or run downloaded or compiled code.
DENIED = ("torch.hub", "torch.load", "torch.jit", "torch.package", "torch.utils.cpp_extension",
          "torch.ops", "torch.classes", "torch.library", "torch.save")

_recipe_namespace: dict[str, Any] = {}


def set_recipe_namespace(namespace: dict[str, Any]) -> None:
    """Let bare `_component_` names (no dots) refer to objects of the running recipe file."""
    _recipe_namespace.clear()
    _recipe_namespace.update(namespace)


def allowed_modules() -> tuple[str, ...]:
    """The module prefixes a `_component_` may import from: defaults plus TUNELIB_ALLOW_MODULES."""
    extra = [m.strip() for m in os.environ.get(ALLOW_ENV, "").split(",") if m.strip()]
    return DEFAULT_ALLOWED + tuple(extra)


def allow_module(name: str) -> None:
    """Add a module to the allow-list of this process and of processes it starts (torchrun)."""
    current = [m for m in os.environ.get(ALLOW_ENV, "").split(",") if m]
    if name not in current:
        os.environ[ALLOW_ENV] = ",".join(current + [name])


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + ".")


def resolve(path: str, where: str = "_component_") -> Callable:
    """Return the callable a `_component_` string names.

    Raises:
        ConfigError: the path is refused, cannot be imported, or is not callable.
    """
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{where}: _component_ must be a dotted path such as tunelib.models.from_hf_config")
    if "." not in path:
        return _from_recipe(path, where)
    if any(part.startswith("_") for part in path.split(".")):
        raise ConfigError(f"{where}: '{path}' names a private object; use a public name")
    if any(_under(path, d) for d in DENIED):
        raise ConfigError(f"{where}: '{path}' is refused: it can load or run code outside the config")
    if not any(_under(path, m) for m in allowed_modules()):
        top = path.split(".")[0]
        raise ConfigError(
            f"{where}: '{path}' is not in an allowed module ({', '.join(allowed_modules())}); "
            f"if you trust it, allow it with `tune run --allow-module {top} ...` "
            f"or TUNELIB_ALLOW_MODULES={top}"
        )
    target = _import(path, where)
    if not callable(target):
        raise ConfigError(f"{where}: '{path}' is not callable")
    return target


def _from_recipe(name: str, where: str) -> Callable:
    target = _recipe_namespace.get(name)
    if target is None or not callable(target):
        raise ConfigError(
            f"{where}: '{name}' is not a dotted path, and the running recipe defines no '{name}'; "
            "write the full path, e.g. tunelib.data.alpaca_dataset"
        )
    return target


def _import(path: str, where: str) -> Any:
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name and not module_name.startswith(e.name):
                raise  # the module exists but one of its own imports is missing: a real bug
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                raise ConfigError(_no_attribute(path, where, module_name, obj, attr))
            obj = getattr(obj, attr)
        return obj
    hint = ""
    if os.path.exists(parts[0] + ".py"):
        hint = f"; ./{parts[0]}.py exists but the working directory is not on sys.path: run with PYTHONPATH=."
    raise ConfigError(f"{where}: cannot import '{path}': no module named '{parts[0]}'{hint}")


def _no_attribute(path: str, where: str, module_name: str, module: Any, attr: str) -> str:
    import difflib

    names = [n for n in dir(module) if not n.startswith("_")]
    close = difflib.get_close_matches(attr, names, n=1)
    hint = f" (did you mean {module_name}.{close[0]}?)" if close else ""
    return f"{where}: '{path}' does not exist: {module_name} has no '{attr}'{hint}"


def signature(target: Callable) -> inspect.Signature | None:
    """The call signature of a component, or None when Python cannot tell."""
    try:
        return inspect.signature(target)
    except (TypeError, ValueError):
        return None


def type_hints(target: Callable) -> dict[str, Any]:
    """Evaluated annotations of a component's parameters ({} when they cannot be evaluated)."""
    func = target.__init__ if inspect.isclass(target) else target
    try:
        return typing.get_type_hints(func)
    except Exception:  # noqa: BLE001 - forward references we cannot evaluate are simply unchecked
        return {}


def instantiate(node: Any, *args: Any, **kwargs: Any) -> Any:
    """Build the object a `_component_` node describes.

    `args` go to the top-level call only (a recipe passes the tokenizer to a dataset, the
    parameters to an optimizer); `kwargs` override the node's own keys. Nested component
    nodes and lists of them are built first. Returns None for a None node.

    Raises:
        ConfigError: the node has no `_component_`, or names a refused component.
    """
    if node is None:
        return None
    data = _to_plain(node)
    if isinstance(data, list):
        return [instantiate(item) for item in data]
    if not isinstance(data, dict) or "_component_" not in data:
        raise ConfigError(f"cannot build {data!r}: a component node needs a _component_ key")
    return _build(data, "", args, kwargs)


def _build(data: dict, where: str, args: tuple, kwargs: dict) -> Any:
    target = resolve(data["_component_"], f"{where or 'config'}._component_")
    params = {k: _build_value(v, f"{where}.{k}" if where else k) for k, v in data.items() if k != "_component_"}
    params.update(kwargs)
    return target(*args, **params)


def _build_value(value: Any, where: str) -> Any:
    if isinstance(value, dict) and "_component_" in value:
        return _build(value, where, (), {})
    if isinstance(value, list):
        return [_build_value(v, f"{where}.{i}") for i, v in enumerate(value)]
    return value


def _to_plain(node: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node
