"""Find the family modules of this package, their HF formats and their named builders.

A family is any module here that defines `HF_FORMAT` (an HF architecture it reads and writes)
and/or `BUILDERS` (names of generated builders). Adding a family means adding its module;
nothing in this file or in the checkpoint code names a family.
"""

from __future__ import annotations

import functools
import importlib
import json
import pkgutil
from pathlib import Path
from types import ModuleType
from typing import Callable

from tunelib.errors import CheckpointError
from tunelib.models.config import DecoderConfig
from tunelib.models.hf_format import HFFormat


@functools.cache
def family_modules() -> tuple[ModuleType, ...]:
    """Every module of tunelib.models that defines a format or builders."""
    import tunelib.models as package

    modules = [importlib.import_module(f"{package.__name__}.{info.name}")
               for info in pkgutil.iter_modules(package.__path__) if not info.name.startswith("_")]
    return tuple(m for m in modules if hasattr(m, "HF_FORMAT") or hasattr(m, "BUILDERS"))


@functools.cache
def hf_formats() -> dict[str, HFFormat]:
    """HF architecture name -> its format."""
    return {m.HF_FORMAT.architecture: m.HF_FORMAT for m in family_modules() if hasattr(m, "HF_FORMAT")}


def builders() -> dict[str, Callable]:
    """Builder name -> builder, for every named size of every family."""
    return {name: getattr(m, name) for m in family_modules() for name in getattr(m, "BUILDERS", ())}


def format_for(config: DecoderConfig) -> HFFormat:
    """The HF format that writes `config` (its `architecture`)."""
    return hf_formats()[config.architecture]


def format_of(hf: dict, where: str) -> HFFormat:
    """The format a config.json dict names in `architectures` (or else `model_type`).

    Raises:
        CheckpointError: no supported architecture; the message lists the supported ones.
    """
    formats = hf_formats()
    names = hf.get("architectures") or []
    if names:
        found = [formats[name] for name in names if name in formats]
    else:  # configs saved without a model class name only say model_type
        found = [fmt for fmt in formats.values() if fmt.model_type == hf.get("model_type")]
    if found:
        return found[0]
    named = ", ".join(names) or f"model_type {hf.get('model_type')!r}"
    raise CheckpointError(f"{where} describes {named}, which tunelib does not support; "
                          f"supported architectures: {', '.join(sorted(formats))}")


def read_hf_config(folder: str | Path) -> DecoderConfig:
    """The DecoderConfig described by `folder/config.json`.

    Raises:
        CheckpointError: the file is missing, not JSON, of an unsupported architecture, or
            holds values tunelib cannot run (the message names the file and the field).
    """
    path = Path(folder) / "config.json"
    return config_from_dict(load_json(path), str(path))


def config_from_dict(hf: dict, where: str = "config.json") -> DecoderConfig:
    """The DecoderConfig of a config.json dict; `where` names it in error messages."""
    fmt = format_of(hf, where)
    try:
        return fmt.read(hf)
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{where} ({fmt.architecture}) cannot be used: {e}") from None


def load_json(path: Path) -> dict:
    """A JSON object from `path`, or a CheckpointError saying what is wrong with the file."""
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; checkpoint_dir must be a Hugging Face model folder "
                              "(download one with `tune download <repo> --output-dir <dir>`)")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} cannot be read as JSON: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data
