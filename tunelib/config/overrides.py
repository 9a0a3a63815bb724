"""Command-line overrides: parse them as a torchtune user types them, and apply them strictly.

Grammar (each word of the command line after the recipe and `--config`):

    key=value         set a key (a value may itself contain '=')
    --key=value       the same, with dashes
    --key value       the same, value in the next word
    ~key              remove a key
    +key=value        add a key that neither the config nor the schema knows (for **kwargs)
    model=a.b.fn      on a component node, replaces only its _component_

A list the shell split into several words (`--model.lora_attn_modules=["q_proj", "k_proj"]`)
is joined back until its brackets balance. A key must already exist in the config, in the
recipe's schema, or among the parameters of the component that holds it; otherwise the
override is refused with a "did you mean".
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass
from typing import Any

from tunelib.config.checks import component_params, suggest
from tunelib.config.schema import schema_fields
from tunelib.errors import ConfigError

_KEY = re.compile(r"^[A-Za-z_][\w\-]*(\.[\w\-]+)*$")
_DOTTED = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)+$")


@dataclass(frozen=True)
class Override:
    """One parsed override: op is 'set', 'add' or 'remove'."""

    op: str
    key: str
    raw: str | None
    text: str


def parse_overrides(words: list[str]) -> list[Override]:
    """Turn command-line words into overrides.

    Raises:
        ConfigError: a word is not an override, a key is malformed, or brackets never close.
    """
    out, i = [], 0
    while i < len(words):
        word = words[i]
        i += 1
        body = word[2:] if word.startswith("--") else word
        if word.startswith("--") and "=" not in body:
            if i >= len(words) or words[i].startswith("--"):
                raise ConfigError(f"override '{word}' has no value; write {word}=VALUE")
            body, i = f"{body}={words[i]}", i + 1
        if body.startswith("~"):
            out.append(Override("remove", _key(body[1:], word), None, word))
            continue
        if "=" not in body:
            raise ConfigError(f"'{word}' is not an override; write key=value (or ~key to remove a key)")
        key, raw = body.split("=", 1)
        while _unbalanced(raw) and i < len(words):
            raw, i = f"{raw} {words[i]}", i + 1
        if _unbalanced(raw):
            raise ConfigError(f"override '{key}={raw}': brackets or quotes never close")
        op = "add" if key.startswith("+") else "set"
        out.append(Override(op, _key(key.lstrip("+"), word), raw, word))
    return out


def _key(key: str, word: str) -> str:
    if not _KEY.match(key):
        raise ConfigError(f"override '{word}': '{key}' is not a config key (expected names joined by dots)")
    return key


def _unbalanced(raw: str) -> bool:
    return raw.count("[") != raw.count("]") or raw.count("{") != raw.count("}") or raw.count('"') % 2 == 1


def apply_overrides(cfg, overrides: list[Override], schema: type | None) -> None:
    """Apply overrides in order to an unresolved DictConfig, in place.

    Raises:
        ConfigError: an unknown key (with a suggestion), removing a missing key or a bare
            `_component_`, or a value that cannot be parsed.
    """
    from omegaconf import OmegaConf

    for ov in overrides:
        if ov.op == "remove":
            _remove(cfg, ov)
            continue
        _check_parents(cfg, ov)
        annotation = None if ov.op == "add" else _known(cfg, ov.key, schema)
        value = parse_value(ov.raw, annotation)
        node = OmegaConf.select(cfg, ov.key, throw_on_missing=False)
        if _is_component_node(node) and isinstance(value, str) and _DOTTED.match(value):
            OmegaConf.update(cfg, ov.key + "._component_", value, merge=False)
        else:
            OmegaConf.update(cfg, ov.key, value, merge=False, force_add=True)


def _check_parents(cfg, ov: Override) -> None:
    """Refuse `optimizer.lr.foo=1` when optimizer.lr holds one value: OmegaConf would quietly
    turn it into a group of keys, which the checks might not see."""
    from omegaconf import Container, OmegaConf

    parts = ov.key.split(".")
    for depth in range(1, len(parts)):
        parent = ".".join(parts[:depth])
        node = OmegaConf.select(cfg, parent, throw_on_missing=False, throw_on_resolution_failure=False)
        if node is not None and not isinstance(node, Container):
            raise ConfigError(f"'{ov.text}': {parent} is {node!r}, a single value, so it has no key "
                              f"'{parts[depth]}'; set it with {parent}=VALUE")


def _remove(cfg, ov: Override) -> None:
    from omegaconf import OmegaConf

    if ov.key.split(".")[-1] == "_component_":
        raise ConfigError(f"'{ov.text}': a component's _component_ cannot be removed alone; remove the whole node")
    parent_key, _, leaf = ov.key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if parent is None or not hasattr(parent, "keys") or leaf not in parent:
        existing = list(parent.keys()) if parent is not None and hasattr(parent, "keys") else []
        raise ConfigError(f"cannot remove '{ov.key}': the config has no such key{suggest(leaf, existing, parent_key)}")
    del parent[leaf]


def _is_component_node(node: Any) -> bool:
    return hasattr(node, "keys") and "_component_" in node


def _known(cfg, key: str, schema: type | None) -> Any:
    """Check that `key` may be set; return its annotation when one is known (for parsing)."""
    node, annotation, where = cfg, None, ""
    fields = schema_fields(schema) if schema is not None else {}
    for depth, seg in enumerate(key.split(".")):
        options, free = _options(node, fields, top=depth == 0)
        if seg not in options and not free:
            raise ConfigError(f"unknown key '{key}'{_suggestion(cfg, key, where, seg, list(options), fields)}")
        annotation = options.get(seg)
        child = node.get(seg) if hasattr(node, "keys") else _index(node, seg)
        if child is None:
            return annotation if depth == len(key.split(".")) - 1 else None
        node = child
        where = f"{where}.{seg}" if where else seg
    return annotation


def _options(node: Any, fields: dict[str, Any], top: bool) -> tuple[dict[str, Any], bool]:
    """The keys one level of the config accepts (name -> annotation) and whether any is fine.

    The top level accepts what the YAML and the schema name; a component node what the YAML
    and its signature name (anything if it takes **kwargs); a plain mapping anything.
    """
    if not hasattr(node, "keys"):
        return {}, True
    options: dict[str, Any] = {k: None for k in node.keys()}
    if top:
        options.update({name: f.annotation for name, f in fields.items()})
        return options, False
    if not _is_component_node(node):
        return options, True
    found = component_params({"_component_": node.get("_component_")})
    if found is None:
        return options, True
    params, takes_any = found
    options.update(params)
    return options, takes_any


def _index(node: Any, seg: str) -> Any:
    if seg.isdigit() and hasattr(node, "__len__") and int(seg) < len(node):
        return node[int(seg)]
    return None


def _suggestion(cfg, key: str, where: str, seg: str, options: list[str], fields: dict) -> str:
    hint = suggest(seg, options, where)
    if hint:
        return hint
    # A key given at the wrong level: lora_rank=64 instead of model.lora_rank=64.
    for top in list(cfg.keys()):
        node = cfg.get(top)
        if _is_component_node(node):
            found = component_params({"_component_": node.get("_component_")})
            if found and seg in found[0] or seg in node:
                return f" (did you mean '{top}.{seg}'?)"
    return ""


def parse_value(raw: str, annotation: Any = None) -> Any:
    """Parse an override's value as YAML, keeping it a plain string where a string is expected.

    `None` and `null` become None, as torchtune users write them.
    """
    from omegaconf import OmegaConf

    if raw in ("None", "null", "~"):
        return None
    if _wants_str(annotation):
        return raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"" else raw
    try:
        parsed = OmegaConf.from_dotlist([f"v={raw}"])
        return OmegaConf.to_container(parsed, resolve=False)["v"]
    except Exception as e:  # noqa: BLE001 - YAML parser errors have many types
        raise ConfigError(f"cannot parse override value '{raw}': {str(e).splitlines()[0]}") from None


def _wants_str(annotation: Any) -> bool:
    if annotation is str:
        return True
    args = typing.get_args(annotation)
    return bool(args) and str in args and not any(a in (int, float, bool, list, dict) for a in args)
