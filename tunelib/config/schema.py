"""Recipe settings: one dataclass per recipe, each field with its type, default and one line of doc.

A recipe's schema is the single place where its top-level config keys, their types and their
defaults live. The config checks refuse keys a schema does not name, and the recipe reads
every setting as `cfg.key` with the default already filled in, so no `cfg.get(key, default)`
is scattered through recipe code.

    @dataclass(kw_only=True)   # so required and defaulted fields may come in any order
    class Settings:
        output_dir: str = setting(REQUIRED, "Where checkpoints and logs are written.")
        model: Component = component("The model builder.", provided=("checkpoint_dir",))
        batch_size: int = setting(2, "Sequences per step on each device.")
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

REQUIRED: Any = dataclasses.MISSING


class Component:
    """Annotation for a config node that names a `_component_` to build."""


@dataclasses.dataclass(frozen=True)
class FieldInfo:
    """What the checks need to know about one top-level setting."""

    name: str
    annotation: Any
    default: Any
    doc: str
    provided: tuple[str, ...]

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def is_component(self) -> bool:
        return mentions_component(self.annotation)


def setting(default: Any = REQUIRED, doc: str = "", *, provided: tuple[str, ...] = ()) -> Any:
    """Declare a schema field with its default (or REQUIRED) and one line of documentation.

    `provided` names the arguments the recipe passes itself when it builds a component
    (e.g. `params` of an optimizer), which a config must therefore not set.
    """
    metadata = {"doc": doc, "provided": tuple(provided)}
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def component(doc: str, *, default: Any = REQUIRED, provided: tuple[str, ...] = ()) -> Any:
    """Declare a field holding a `_component_` node (required unless a default is given)."""
    return setting(default, doc, provided=provided)


def schema_fields(schema: type) -> dict[str, FieldInfo]:
    """Return the schema's fields by name, with annotations evaluated.

    Raises:
        TypeError: if `schema` is not a dataclass.
    """
    hints = typing.get_type_hints(schema)
    out = {}
    for f in dataclasses.fields(schema):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = REQUIRED
        out[f.name] = FieldInfo(
            name=f.name,
            annotation=hints.get(f.name, Any),
            default=default,
            doc=f.metadata.get("doc", ""),
            provided=f.metadata.get("provided", ()),
        )
    return out


def mentions_component(annotation: Any) -> bool:
    """True if `annotation` is Component or a union/list that contains it."""
    if annotation is Component:
        return True
    return any(mentions_component(a) for a in typing.get_args(annotation))


def type_name(annotation: Any) -> str:
    """How a setting's type reads in help: `int`, `int | None`, `'fp32' | 'bf16'`, `component`."""
    if annotation is Component:
        return "component"
    if annotation is type(None):
        return "None"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is list:
        return f"list[{type_name(args[0])}]" if args else "list"
    return getattr(annotation, "__name__", str(annotation))


def describe(schema: type) -> list[tuple[str, str, str, str]]:
    """(name, type, default, one line of doc) for each setting of `schema`, in declaration order."""
    rows = []
    for info in schema_fields(schema).values():
        if info.required:
            default = "required"
        else:
            default = repr(info.default) if isinstance(info.default, str) else str(info.default)
        rows.append((info.name, type_name(info.annotation), default, info.doc))
    return rows
