"""Check a config value against a type annotation, and name the type in words for messages."""

from __future__ import annotations

import inspect
import os
import types
import typing
from typing import Any, Literal, Union

_NONE = type(None)


def type_error(value: Any, annotation: Any) -> str | None:
    """Return None if `value` fits `annotation`, else a short phrase saying what was expected.

    Only the annotations a config can express are checked (bool, int, float, str, paths, None,
    lists, tuples, dicts, Literal, unions, Component); anything else is accepted as is.
    """
    return None if _fits(value, annotation) else f"expected {describe(annotation)}, got {_show(value)}"


def _fits(value: Any, ann: Any) -> bool:
    from tunelib.config.schema import Component

    if ann in (Any, inspect.Parameter.empty, object):
        return True
    if ann is Component:
        return isinstance(value, dict) and "_component_" in value
    if ann is _NONE or ann is None:
        return value is None
    if ann is bool:
        return isinstance(value, bool)
    if ann is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if ann is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if ann is str:
        return isinstance(value, str)
    if ann in (os.PathLike, typing.Text) or getattr(ann, "__name__", "") == "Path":
        return isinstance(value, str)
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin in (Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is Literal:
        return value in args
    if origin in (list, tuple, typing.Sequence, _abc("Sequence")):
        return _fits_sequence(value, origin, args)
    if origin in (dict, typing.Mapping, _abc("Mapping")):
        return isinstance(value, dict)
    if isinstance(ann, type):
        if ann in (list, tuple):
            return isinstance(value, (list, tuple))
        if ann is dict:
            return isinstance(value, dict)
        # A class annotation (a tokenizer, a module): the value is built by a component or
        # passed by the recipe, so a plain config value cannot be judged here.
        return True
    return True


def _fits_sequence(value: Any, origin: Any, args: tuple) -> bool:
    if not isinstance(value, (list, tuple)):
        return False
    if origin is tuple and args and args[-1] is not Ellipsis:
        return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args))
    item = args[0] if args else Any
    return all(_fits(v, item) for v in value)


def _abc(name: str) -> Any:
    import collections.abc

    return getattr(collections.abc, name)


def describe(ann: Any) -> str:
    """Name an annotation the way a user reads it: 'int', 'list of str', 'one of a, b'."""
    from tunelib.config.schema import Component

    if ann is Component:
        return "a node with a _component_"
    if ann is _NONE or ann is None:
        return "null"
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple, typing.Sequence, _abc("Sequence")):
        return f"a list of {describe(args[0])}" if args else "a list"
    if origin in (dict, typing.Mapping, _abc("Mapping")):
        return "a mapping"
    return getattr(ann, "__name__", str(ann))


def _show(value: Any) -> str:
    if isinstance(value, dict) and "_component_" in value:
        return f"a {value['_component_']} node"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
