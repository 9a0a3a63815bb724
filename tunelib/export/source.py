"""What an export reads: a model's config and its weights under Hugging Face names, from any folder.

A folder may be a Hugging Face model folder, a LoRA run's `final/` (its `merged/` model, or
else its `adapter/`), a run's output_dir (its `final/`), or a PEFT LoRA/DoRA adapter folder,
which is merged onto its base on the fly. Weights are handed out one at a time (`Weights`),
so an export never holds a second copy of the model.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from tunelib.checkpoint import from_pretrained, weight_files
from tunelib.checkpoint.hf_load import open_weights
from tunelib.errors import CheckpointError
from tunelib.models import DecoderConfig
from tunelib.models.registry import format_for, read_hf_config
from tunelib.peft import merged_weights
from tunelib.peft.peft_folder import load_peft_adapter

ADAPTER_CONFIG = "adapter_config.json"


@dataclass
class Weight:
    """One tensor by name: its shape now, its values when `make()` is called."""

    shape: tuple[int, ...]
    make: Callable[[], torch.Tensor]


@dataclass
class Source:
    """A model to export: `model_dir` holds config.json and the tokenizer; `weights` are HF-named."""

    model_dir: Path
    config: DecoderConfig
    weights: dict[str, Weight]
    adapter_dir: Path | None = None


def resolve(folder: str | Path, base: str | Path | None = None) -> tuple[Path, Path | None]:
    """`(model folder, adapter folder or None)` for what a user may pass.

    Raises:
        CheckpointError: the folder does not exist or holds no model or adapter; an adapter
            whose base cannot be found (the message says to pass --base).
    """
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise CheckpointError(f"folder {path} does not exist; pass a Hugging Face model folder, a run's "
                              "output folder or an adapter folder")
    if (path / ADAPTER_CONFIG).is_file():
        return _base_of(path, base), path
    if (path / "config.json").is_file():
        return path, None
    for inner in (path / "merged", path / "adapter", path / "final"):
        if inner.is_dir() and ((inner / "config.json").is_file() or (inner / ADAPTER_CONFIG).is_file()
                               or (inner / "final").is_dir() or (inner / "merged").is_dir()):
            return resolve(inner, base)
    raise CheckpointError(f"{path} holds no config.json and no {ADAPTER_CONFIG}; pass a Hugging Face model "
                          "folder, a run's output folder or an adapter folder")


def _base_of(adapter: Path, base: str | Path | None) -> Path:
    if base is not None:
        folder = Path(base).expanduser()
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"--base {folder} is not a model folder (no config.json there)")
        return folder
    try:
        named = json.loads((adapter / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        named = None
    if named and (Path(named).expanduser() / "config.json").is_file():
        return Path(named).expanduser()
    where = f"; it names {named!r}, which is not a model folder here (tune download it first)" if named else ""
    raise CheckpointError(f"{adapter} is an adapter: give its base model folder with --base{where}")


@contextlib.contextmanager
def open_source(model_dir: Path, adapter: Path | None = None) -> Iterator[Source]:
    """The model of `model_dir` (with `adapter` merged in), open for reading while the context lasts.
    `resolve` finds both for a folder a user names.

    Raises:
        CheckpointError: a config tunelib cannot read, missing or damaged weights, an adapter
            that does not fit the model.
    """
    config = read_hf_config(model_dir)
    if adapter is not None:
        yield Source(model_dir, config, _merged(model_dir, adapter), adapter)
        return
    with contextlib.ExitStack() as stack:
        weights = {}
        for path in weight_files(model_dir):
            reader = stack.enter_context(open_weights(path))
            for key in reader.keys():
                weights[key] = Weight(tuple(reader.meta(key).shape), _reading(reader, key))
        yield Source(model_dir, config, weights)


def _reading(reader, key: str) -> Callable[[], torch.Tensor]:
    return lambda: reader.read(key)


def _merged(model_dir: Path, adapter: Path) -> dict[str, Weight]:
    """The base with the adapter folded in (W + s·BA, DoRA rescaled), under HF names."""
    model = from_pretrained(model_dir, dtype=torch.float32)
    load_peft_adapter(model, adapter, fused_projections=format_for(model.config).fused_projections)
    pending, _ = merged_weights(model)
    return {name: Weight(tuple(p.shape), _detached(p.make)) for name, p in pending.items()}


def _detached(make: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    return lambda: make().detach()
