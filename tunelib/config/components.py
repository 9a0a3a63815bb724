"""Build `_component_` nodes, importing only from modules the user allowed.

A YAML file is data, so a shared config must not be able to run arbitrary code (torchtune
#2971). By default a `_component_` may name a class or function of `tunelib` (less its command
line and config machinery), `torch.optim`, `torch.nn`, `torchao.optim` or
`torchao.quantization`, or a class or function defined in the running recipe's own file.
Anything else needs an explicit opt-in outside the YAML:

    tune run --allow-module my_datasets lora_finetune_single_device --config my.yaml
    TUNELIB_ALLOW_MODULES=my_datasets,my_models tune run ...

The string is not trusted: the object it names is looked up and what it *is* decides. It must
be a class or function (or a class's method), reached without passing through another module
(`torch.os.system`) or an object (`module.instance.method`), and the module that defines it must
be allowed too (a name re-exported into an allowed module from elsewhere is refused).

The working directory is never added to `sys.path`; a module of your own must be importable
(e.g. `PYTHONPATH=.`).

A torchtune path (`torchtune.models.llama3_1.qlora_llama3_1_8b`) is first translated through
`torchtune_names` into the tunelib path it stands for, and that path is what these rules judge.
"""

from __future__ import annotations

import collections.abc
import importlib
import inspect
import os
import types
import typing
from typing import Any, Callable

from tunelib.config import torchtune_names
from tunelib.errors import ConfigError

ALLOW_ENV = "TUNELIB_ALLOW_MODULES"
DEFAULT_ALLOWED = ("tunelib", "torch.optim", "torch.nn", "torchao.optim", "torchao.quantization")
# Parts of allowed packages (or of packages a user allows) whose job is to load pickles, run
# downloaded, compiled or generated code, start processes, or widen this allow-list.
DENIED = ("tunelib.cli", "tunelib.config", "tunelib.recipes",
          "torch.hub", "torch.load", "torch.save", "torch.serialization", "torch.jit", "torch.package",
          "torch.utils.cpp_extension", "torch.utils.collect_env", "torch.utils.model_zoo", "torch.utils.benchmark",
          "torch.ops", "torch.classes", "torch.library", "torch.fx", "torch.export", "torch.multiprocessing",
          "torch.distributed.run", "torch.distributed.launch", "torch.distributed.rpc", "torch.distributed.elastic",
          "torchao.quantization.pt2e", "builtins")

_recipe_namespace: dict[str, Any] = {}


def set_recipe_namespace(namespace: dict[str, Any]) -> None:
    """Let bare `_component_` names (no dots) refer to classes and functions of the running recipe.

    `namespace` is the recipe module's globals; only objects whose `__module__` is its
    `__name__` (defined in that file, not imported into it) can be named.
    """
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
    """Return the class or function a `_component_` string names.

    Raises:
        ConfigError: the path is refused (a private name, a denied or not allowed module, a
            walk through another module or an object, an object defined outside the allowed
            modules, or something that is not a class or function), or cannot be imported.
    """
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{where}: _component_ must be a dotted path such as tunelib.models.from_hf_config")
    if "." not in path:
        return _from_recipe(path, where)
    if torchtune_names.is_torchtune(path):  # checked below as the tunelib path it stands for
        path = torchtune_names.equivalent(path, where).path
    if any(part.startswith("_") for part in path.split(".")):
        raise ConfigError(f"{where}: '{path}' names a private object; use a public name")
    also = torchtune_names.trusted_module(path)
    _check_module(path, path, where, also=also)
    target = _import(path, where)
    _check_kind(target, path, where)
    home = _defining_module(target)
    if home is None:
        raise ConfigError(f"{where}: '{path}' is refused: Python cannot tell which module defines it")
    _check_module(home, path, where, defined_in=home, also=also)
    return target


def _check_module(module_path: str, path: str, where: str, defined_in: str | None = None,
                  also: str | None = None) -> None:
    """Refuse `module_path` (the config's path, or where its object is defined) unless allowed
    (`also`: one more package, for a third-party path the torchtune table lists)."""
    what = f"'{path}' is defined in {defined_in}, which" if defined_in else f"'{path}'"
    if any(_under(module_path, d) for d in DENIED):
        raise ConfigError(f"{where}: {what} is refused: it can load or run code outside the config")
    if not any(_under(module_path, m) for m in allowed_modules() + ((also,) if also else ())):
        top = module_path.split(".")[0]
        raise ConfigError(
            f"{where}: {what} is not in an allowed module ({', '.join(allowed_modules())}); "
            f"if you trust it, allow it with `tune run --allow-module {top} ...` "
            f"or TUNELIB_ALLOW_MODULES={top}"
        )


def _check_kind(target: Any, path: str, where: str) -> None:
    routine = isinstance(target, (types.FunctionType, types.BuiltinFunctionType, types.MethodType))
    if not (inspect.isclass(target) or routine):
        raise ConfigError(f"{where}: '{path}' is a {type(target).__name__} object, not a class or function")


def _defining_module(target: Any) -> str | None:
    owner = target.__self__ if isinstance(target, types.MethodType) else target  # a classmethod: its class
    if isinstance(target, types.MethodType) and not inspect.isclass(owner):
        return None  # a method bound to an object: that object is not in the config's hands
    module = getattr(owner, "__module__", None)
    return module if isinstance(module, str) and module else None


def _from_recipe(name: str, where: str) -> Callable:
    target = _recipe_namespace.get(name)
    home = _recipe_namespace.get("__name__")
    defined_here = target is not None and home is not None and getattr(target, "__module__", None) == home
    if not defined_here or not (inspect.isclass(target) or inspect.isfunction(target)):
        raise ConfigError(
            f"{where}: '{name}' is not a dotted path, and the running recipe defines no class or function "
            f"'{name}'; write the full path, e.g. tunelib.data.alpaca_dataset"
        )
    return target


def _import(path: str, where: str) -> Any:
    """The object at `path`: the longest importable module, then attributes of classes only."""
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            module: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name and not module_name.startswith(e.name):
                raise  # the module exists but one of its own imports is missing: a real bug
            continue
        if module.__name__ != module_name:  # sys.modules holds another module under this name
            raise ConfigError(f"{where}: '{path}' is refused: {module_name} is the module {module.__name__}")
        return _walk(module, module_name, parts[cut:], path, where)
    hint = ""
    if os.path.exists(parts[0] + ".py"):
        hint = f"; ./{parts[0]}.py exists but the working directory is not on sys.path: run with PYTHONPATH=."
    raise ConfigError(f"{where}: cannot import '{path}': no module named '{parts[0]}'{hint}")


def _walk(module: types.ModuleType, module_name: str, attrs: list[str], path: str, where: str) -> Any:
    obj: Any = module
    reached = module_name
    for i, attr in enumerate(attrs):
        if i > 0 and not inspect.isclass(obj):
            raise ConfigError(f"{where}: '{path}' is refused: it goes through {reached}, a "
                              f"{type(obj).__name__} object; name a class or function where it is defined")
        if not hasattr(obj, attr):
            raise ConfigError(_no_attribute(path, where, reached, obj, attr))
        obj = getattr(obj, attr)
        reached = f"{reached}.{attr}"
        if isinstance(obj, types.ModuleType):
            raise ConfigError(f"{where}: '{path}' is refused: {reached} is the module {obj.__name__}, reached "
                              f"through {reached.rsplit('.', 1)[0]}; name it by its own path")
    return obj


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
    data = torchtune_names.translate_node(data, where or "config")
    target = resolve(data["_component_"], f"{where or 'config'}._component_")
    hints = type_hints(target)
    params = {k: _build_value(v, f"{where}.{k}" if where else k, hints.get(k))
              for k, v in data.items() if k != "_component_"}
    params.update(kwargs)
    return target(*args, **params)


def _build_value(value: Any, where: str, annotation: Any = None) -> Any:
    if isinstance(value, dict) and "_component_" in value:
        return _build(value, where, (), {})
    if isinstance(value, list):
        return [_build_value(v, f"{where}.{i}") for i, v in enumerate(value)]
    if isinstance(value, str) and takes_callable(annotation):
        return resolve(value, where)  # `filter_fn: my_data.keep_row`: the function itself, allow-list applies
    return value


def takes_callable(annotation: Any) -> bool:
    """Whether a parameter annotated so takes a function (`Callable`, `Callable | None`, ...), so
    that a dotted path given for it in a config names that function."""
    if annotation is collections.abc.Callable or typing.get_origin(annotation) is collections.abc.Callable:
        return True
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and any(
        takes_callable(a) for a in typing.get_args(annotation))


def _to_plain(node: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node
