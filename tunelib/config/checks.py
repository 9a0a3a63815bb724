"""Strict checks of a whole config against a recipe schema and its components' signatures.

`tune run` and `tune validate` call the same `check`. It refuses unknown keys (with a "did
you mean"), missing required keys, values of the wrong type, `_component_`s that are not
allowed or do not exist, and component keys their signature does not take, nested
components included. Nothing is built and no weight is loaded.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any

from tunelib.config import components, torchtune_names
from tunelib.config.schema import FieldInfo, schema_fields
from tunelib.config.types import type_error
from tunelib.errors import ConfigError


def check(cfg: dict, schema: type | None) -> None:
    """Check a resolved config (a plain dict) against `schema`.

    Raises:
        ConfigError: one line listing every problem found.
    """
    problems: list[str] = []
    fields = schema_fields(schema) if schema is not None else {}
    if schema is not None:
        for key in cfg:
            if key not in fields:
                problems.append(f"unknown key '{key}'{suggest(key, list(fields))}")
    for name, info in fields.items():
        if name not in cfg:
            if info.required:
                problems.append(f"missing required key '{name}' ({info.doc})")
            continue
        problems += _check_field(cfg[name], info)
    if schema is None:
        problems += _check_any_components(cfg, "")
    elif not problems and hasattr(schema, "value_problems"):
        # Only once every type is right: a schema's rules compare values (batch_size >= 1).
        problems += schema.value_problems(cfg)
    if problems:
        head = "config is not valid: " if len(problems) == 1 else f"config has {len(problems)} problems: "
        raise ConfigError(head + "; ".join(problems))


def _check_field(value: Any, info: FieldInfo) -> list[str]:
    err = type_error(value, info.annotation)
    if err:
        return [f"{info.name}: {err}"]
    if isinstance(value, dict) and "_component_" in value:
        return check_component(value, info.name, info.provided)
    if isinstance(value, list):
        out = []
        for i, item in enumerate(value):
            if isinstance(item, dict) and "_component_" in item:
                out += check_component(item, f"{info.name}.{i}", info.provided)
        return out
    return []


def _check_any_components(node: Any, where: str) -> list[str]:
    if isinstance(node, dict):
        if "_component_" in node:
            return check_component(node, where or "config", ())
        return [p for k, v in node.items() for p in _check_any_components(v, f"{where}.{k}" if where else k)]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _check_any_components(v, f"{where}.{i}")]
    return []


def check_component(node: dict, where: str, provided: tuple[str, ...]) -> list[str]:
    """Check one `_component_` node and its nested nodes; return the problems found.

    `provided` names arguments the recipe passes itself: `'*1'` stands for the first
    positional parameter (a dataset's tokenizer), any other string for a keyword.
    """
    try:
        node = torchtune_names.translate_node(node, where)
        target = components.resolve(node["_component_"], f"{where}._component_")
    except ConfigError as e:
        return [str(e)]
    sig = components.signature(target)
    if sig is None:
        return []
    params = {n: p for n, p in sig.parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    positional = _positional_provided(params, provided)
    keywords = {p for p in provided if not p.startswith("*")}
    hints = components.type_hints(target)
    name = node["_component_"]
    problems = []
    for key, value in node.items():
        if key == "_component_":
            continue
        path = f"{where}.{key}"
        if key in positional or key in keywords:
            problems.append(f"{path} is passed by the recipe; remove it from the config")
        elif key not in params and not takes_any:
            problems.append(f"unknown key '{path}': {name} takes no '{key}'{suggest(key, list(params), where)}")
        else:
            problems += _check_param_value(value, hints.get(key), path)
    for kw in keywords:
        if kw not in params and not takes_any:
            problems.append(f"{where}: {name} must accept '{kw}', which the recipe passes to it")
    for pname, p in params.items():
        if p.default is inspect.Parameter.empty and pname not in node and pname not in positional | keywords:
            problems.append(f"missing required key '{where}.{pname}' for {name}")
    return problems


def _positional_provided(params: dict[str, inspect.Parameter], provided: tuple[str, ...]) -> set[str]:
    count = sum(int(p[1:]) for p in provided if p.startswith("*"))
    positional = [n for n, p in params.items() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return set(positional[:count])


def _check_param_value(value: Any, annotation: Any, path: str) -> list[str]:
    if isinstance(value, dict) and "_component_" in value:
        return check_component(value, path, ())
    if isinstance(value, list) and any(isinstance(v, dict) and "_component_" in v for v in value):
        return [p for i, v in enumerate(value) for p in _check_param_value(v, None, f"{path}.{i}")]
    if annotation is None:
        return []
    if isinstance(value, str) and components.takes_callable(annotation):
        try:
            components.resolve(value, path)
        except ConfigError as e:
            return [str(e)]
        return []
    err = type_error(value, annotation)
    return [f"{path}: {err}"] if err else []


def suggest(key: str, candidates: list[str], prefix: str = "") -> str:
    """' (did you mean 'x'?)' for the closest candidate, or '' when none is close."""
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if not close:
        return ""
    full = f"{prefix}.{close[0]}" if prefix else close[0]
    return f" (did you mean '{full}'?)"


def component_params(node: Any) -> tuple[dict[str, Any], bool] | None:
    """(parameter name -> annotation, takes **kwargs) of a node's component, or None.

    Used by overrides to accept keys the YAML omits but the component takes. Returns None
    when the node is not a component or its target cannot be imported (the full check
    reports that).
    """
    if not isinstance(node, dict) or not isinstance(node.get("_component_"), str):
        return None
    try:
        target = components.resolve(torchtune_names.translate_node(node)["_component_"])
    except ConfigError:
        return None
    sig = components.signature(target)
    if sig is None:
        return None
    hints = components.type_hints(target)
    names = {n: hints.get(n) for n, p in sig.parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return names, any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
