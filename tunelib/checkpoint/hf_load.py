"""Stream a Hugging Face model folder's weights into a model built on the meta device.

One tensor is read, converted, placed and assigned at a time, so loading needs about one
copy of the weights, not two. The model's family maps checkpoint keys to parameter names
(usually the same; Phi-3 splits its fused projections); this file knows no family.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from tunelib.checkpoint.safe_load import load_weights_only
from tunelib.errors import CheckpointError
from tunelib.models.registry import format_for

# In order of preference: safetensors first; pickled .bin files only as plain tensors.
_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_SINGLE = ("model.safetensors", "pytorch_model.bin")
_IGNORED = ("rotary_emb.inv_freq",)  # old checkpoints saved this computed buffer


def weight_files(folder: Path) -> list[Path]:
    """The files holding a folder's weights: shards named by an index, or one file.

    Raises:
        CheckpointError: no weights, or an index naming a shard that is not there.
    """
    for name in _INDEXES:
        index = folder / name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index} is not a valid index (needs a 'weight_map'): {e}") from None
            files = [folder / f for f in dict.fromkeys(weight_map.values())]
            absent = [f.name for f in files if not f.is_file()]
            if absent:
                raise CheckpointError(f"{index} lists {', '.join(absent)}, which {'is' if len(absent) == 1 else 'are'} "
                                      f"not in {folder}; the download is incomplete")
            return files
    for name in _SINGLE:
        if (folder / name).is_file():
            return [folder / name]
    raise CheckpointError(f"{folder} holds no weights: expected model.safetensors, sharded safetensors "
                          "with model.safetensors.index.json, or pytorch_model.bin")


def read_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(key, tensor) pairs of one weight file, one tensor in memory at a time where the format allows."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for key in f.keys():
                    yield key, f.get_tensor(key)
        except SafetensorError as e:  # a truncated download or a file that is not safetensors
            raise CheckpointError(f"cannot read {path}: {str(e).splitlines()[0]}; the file is damaged "
                                  "or incomplete (download it again)") from None
        return
    state = load_weights_only(path, mmap=True)  # mmap pages tensors in on use
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    for key in list(state):
        yield key, state.pop(key)


class _Slots:
    """The model's parameters and persistent buffers by name; tied names follow their first name."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.targets: dict[str, torch.Tensor] = {}
        self.aliases: dict[str, list[str]] = {}  # first name -> other names of the same tensor
        first_name: dict[int, str] = {}
        for name, tensor in model.state_dict(keep_vars=True).items():
            if id(tensor) in first_name:
                self.aliases[first_name[id(tensor)]].append(name)
            else:
                first_name[id(tensor)] = name
                self.targets[name] = tensor
                self.aliases[name] = []
        self.tied = {alias for names in self.aliases.values() for alias in names}
        self.loaded: set[str] = set()

    def assign(self, name: str, tensor: torch.Tensor) -> None:
        old = self.targets[name]
        if isinstance(old, nn.Parameter):  # one Parameter for every tied name, so they stay tied
            tensor = nn.Parameter(tensor, requires_grad=old.requires_grad)
        for target in [name, *self.aliases[name]]:
            module_name, _, attr = target.rpartition(".")
            module = self.model.get_submodule(module_name)
            if isinstance(tensor, nn.Parameter):
                setattr(module, attr, tensor)
            else:
                module.register_buffer(attr, tensor)
        self.loaded.add(name)


def load_hf_weights(model: nn.Module, folder: str | Path, *, dtype: torch.dtype | None = None,
                    device: torch.device | str | None = None,
                    transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
                    ignore_missing: Callable[[str], bool] | None = None) -> nn.Module:
    """Load the weights of an HF model folder into `model` (built on meta) and return it.

    Args:
        model: a CausalLM (possibly with adapters) whose parameters may be on the meta device.
        folder: holds model.safetensors, shards with model.safetensors.index.json, or
            pytorch_model.bin (read with `torch.load(weights_only=True)`, never a full pickle).
        dtype: floating-point weights are converted to it; None keeps the checkpoint's dtype.
        device: where the weights go (default CPU).
        transform: `transform(name, tensor) -> tensor`, applied last (QLoRA quantizes here).
        ignore_missing: `ignore_missing(name)` is True for parameters the checkpoint need not
            have (adapters); they stay where they are, typically on meta.

    Raises:
        CheckpointError: a key the model lacks, a key the checkpoint lacks, or a shape that
            differs; the message names the key, both shapes and the file.
    """
    folder, device = Path(folder), torch.device(device or "cpu")
    fmt = format_for(model.config)
    slots = _Slots(model)
    for path in weight_files(folder):
        for key, tensor in read_tensors(path):
            if key.endswith(_IGNORED) or key in slots.tied:
                continue  # a tied checkpoint may store lm_head too: the embedding is the weight
            for name, part in fmt.split(key, tensor, model.config):
                _check(slots, name, part, path)
                if dtype is not None and part.is_floating_point():
                    part = part.to(dtype)
                part = part.to(device)
                slots.assign(name, transform(name, part) if transform else part)
    _check_complete(slots, ignore_missing, folder)
    materialize_buffers(model, device)
    return model


def _check(slots: _Slots, name: str, tensor: torch.Tensor, path: Path) -> None:
    target = slots.targets.get(name)
    if target is None:
        raise CheckpointError(f"{path.name} has weight '{name}' {_shape(tensor)} that the model does not have; "
                              f"is {path.parent}/config.json the config of these weights?")
    if tensor.shape != target.shape:
        raise CheckpointError(f"{path.name}: weight '{name}' has shape {_shape(tensor)} but the model expects "
                              f"{_shape(target)}; is {path.parent}/config.json the config of these weights?")
    if target.is_floating_point() and not tensor.is_floating_point():
        raise CheckpointError(f"{path.name}: weight '{name}' is {str(tensor.dtype).removeprefix('torch.')}, but "
                              "the model needs floating-point weights (bf16, fp16 or fp32); the file holds quantized "
                              "or converted integers: use the original model's safetensors")


def _check_complete(slots: _Slots, ignore_missing, folder: Path) -> None:
    missing = [name for name in slots.targets
               if name not in slots.loaded and not (ignore_missing and ignore_missing(name))]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise CheckpointError(f"{folder} lacks weight '{missing[0]}' (expected shape "
                              f"{_shape(slots.targets[missing[0]])}){more}; is it the checkpoint of this model?")


def materialize_buffers(model: nn.Module, device: torch.device) -> None:
    """Give every buffer still on meta storage on `device`, then let its module compute it.

    Computed buffers (RoPE frequencies) are in no checkpoint, so a model built on meta and
    filled from one still has them on meta.
    """
    for module in model.modules():
        meta = [name for name, b in module.named_buffers(recurse=False) if b.is_meta]
        for name in meta:
            module.register_buffer(name, torch.empty_like(module._buffers[name], device=device),
                                   persistent=name not in module._non_persistent_buffers_set)
        if meta:
            module.reset_parameters()


def _shape(tensor: torch.Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)
