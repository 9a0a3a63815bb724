"""Stream a Hugging Face model folder's weights into a model built on the meta device.

One tensor is read, converted, placed and assigned at a time, straight into fresh memory
(safetensors files are read, not mapped), so loading costs the weights' bytes once. When the
model was sharded with FSDP2 before loading, each parameter is a DTensor and each process
reads and keeps only its own rows of it (quantizing its piece to NF4 for QLoRA), so no
process ever holds the whole model. The model's family maps checkpoint keys to parameter
names (usually the same; Phi-3 splits its fused projections); this file knows no family.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn
from torch.distributed.tensor import DTensor, Replicate, Shard

from tunelib.checkpoint.safe_load import load_weights_only
from tunelib.checkpoint.safetensors_io import SafetensorsReader
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


class _TorchFile:
    """A pytorch_model.bin with the reader's interface (weights-only unpickling, mapped)."""

    def __init__(self, path: Path):
        self.path = path
        state = load_weights_only(path, mmap=True)  # mmap pages tensors in on use
        if not isinstance(state, dict):
            raise CheckpointError(f"{path} does not hold a state dict of tensors")
        self._state = state

    def keys(self) -> list[str]:
        return list(self._state)

    def meta(self, key: str) -> torch.Tensor:
        return torch.empty_like(self._state[key], device="meta")

    def read(self, key: str) -> torch.Tensor:
        return self._state.pop(key).clone()  # out of the mapping, into memory of its own

    def read_rows(self, key: str, start: int, stop: int) -> torch.Tensor:
        return self._state.pop(key)[start:stop].clone()


@contextlib.contextmanager
def open_weights(path: Path) -> Iterator[SafetensorsReader | _TorchFile]:
    """A reader of one weight file: `keys()`, `meta(key)`, `read(key)`, `read_rows(key, start, stop)`.

    Raises:
        CheckpointError: the file is damaged (the message names it).
    """
    if path.suffix == ".safetensors":
        with SafetensorsReader(path) as reader:
            yield reader
    else:
        yield _TorchFile(path)


def read_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(key, tensor) pairs of one weight file, one tensor in memory at a time."""
    with open_weights(path) as source:
        for key in source.keys():
            yield key, source.read(key)


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
                setattr(module, attr, tensor)  # FSDP2 takes a new sharded parameter up at its first forward
            else:
                module.register_buffer(attr, tensor)
        self.loaded.add(name)


def load_hf_weights(model: nn.Module, folder: str | Path, *, dtype: torch.dtype | None = None,
                    device: torch.device | str | None = None,
                    transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
                    ignore_missing: Callable[[str], bool] | None = None,
                    buffer_device: torch.device | str | None = None) -> nn.Module:
    """Load the weights of an HF model folder into `model` (built on meta) and return it.

    Args:
        model: a CausalLM (possibly with adapters) whose parameters may be on the meta device,
            and may be FSDP2-sharded DTensors: then this process reads only its own rows.
        folder: holds model.safetensors, shards with model.safetensors.index.json, or
            pytorch_model.bin (read with `torch.load(weights_only=True)`, never a full pickle).
        dtype: floating-point weights are converted to it; None keeps the checkpoint's dtype.
        device: where the weights go (default CPU).
        transform: `transform(name, tensor) -> tensor`, applied last (QLoRA quantizes here; on
            a sharded model it gets this process's piece).
        ignore_missing: `ignore_missing(name)` is True for parameters the checkpoint need not
            have (adapters); they stay where they are.
        buffer_device: where computed buffers (RoPE) go, when not `device` (FSDP2's CPU
            offload keeps the weights in CPU memory and computes on the GPU).

    Raises:
        CheckpointError: a key the model lacks, a key the checkpoint lacks, a shape that
            differs, or a damaged file; the message names the key, both shapes and the file.
    """
    folder, device = Path(folder), torch.device(device or "cpu")
    fmt = format_for(model.config)
    slots = _Slots(model)
    stacks = _Stacks(slots, transform)
    for path in weight_files(folder):
        with open_weights(path) as source:
            for key in source.keys():
                if key.endswith(_IGNORED) or key in slots.tied:
                    continue  # a tied checkpoint may store lm_head too: the embedding is the weight
                slot = fmt.stacked(key)
                parts = (_parts(fmt, key, source, slots, model.config, path, transform) if slot is None
                         else stacks.add(key, *slot, source, path))
                for name, part, is_local in parts:
                    part = part.to(dtype) if dtype is not None and part.is_floating_point() else part
                    slots.assign(name, _placed(part, slots.targets[name], device, transform, name, is_local))
    _check_complete(slots, ignore_missing, folder)
    materialize_buffers(model, torch.device(buffer_device) if buffer_device is not None else device)
    return model


def _parts(fmt, key: str, source, slots: _Slots, config, path: Path, transform):
    """(our name, tensor, whether it is already this process's piece) for one checkpoint key.

    A key that is one parameter as it is (the usual case) is read by rows when the parameter
    is sharded by rows; a key the family splits (fused projections), or one the transform
    changes (NF4, which needs the whole weight), is read whole.
    """
    stored = source.meta(key)
    planned = list(fmt.split(key, stored, config))
    for name, meta in planned:
        _check(slots, name, meta, path)
    if len(planned) == 1 and planned[0][1].shape == stored.shape and not _transforms(transform, planned[0][0]):
        name = planned[0][0]
        rows = _local_rows(slots.targets[name])
        if rows is not None:
            return [(name, source.read_rows(key, *rows), True)]
        return [(name, source.read(key), False)]
    return [(name, part, False) for name, part in fmt.split(key, source.read(key), config)]


class _Stacks:
    """Checkpoint keys that each hold one slice of a stacked parameter (one expert's weight),
    gathered until this process has all the slices it keeps, then given out as one part."""

    def __init__(self, slots: _Slots, transform):
        self.slots, self.transform = slots, transform
        self.pieces: dict[str, dict[int, torch.Tensor]] = {}

    def add(self, key: str, name: str, index: int, source, path: Path) -> list[tuple[str, torch.Tensor, bool]]:
        """Read `key` (slice `index` of our `name`) if this process keeps it; the whole parameter's
        (name, tensor, is_local) once its last slice is in, else nothing."""
        target = self.slots.targets.get(name)
        stored = source.meta(key)
        # Slices are stacked along a new first dim (E, out, in), or their rows concatenated
        # (E·out, in) where the parameter is kept flat (NF4 experts).
        flat = target is not None and target.dim() == stored.dim()
        count = 0 if target is None else target.shape[0] // stored.shape[0] if flat else target.shape[0]
        whole = (count, *stored.shape[1:]) if flat else (count, *stored.shape)
        if target is None or index >= count or (whole[0] * (stored.shape[0] if flat else 1),
                                                *whole[1:]) != tuple(target.shape):
            expected = "no such parameter" if target is None else f"slice {index} of {_shape(target)}"
            raise CheckpointError(f"{path.name}: weight '{key}' {_shape(stored)} does not fit the model ({name}: "
                                  f"{expected}); is {path.parent}/config.json the config of these weights?")
        # NF4 quantizes the whole weight; otherwise a process sharded by rows reads only its rows.
        rows = None if flat or _transforms(self.transform, name) else _local_rows(target)
        start, stop = rows or (0, count)
        if not start <= index < stop:
            return []
        got = self.pieces.setdefault(name, {})
        got[index] = source.read(key)
        if len(got) < stop - start:
            return []
        del self.pieces[name]
        pieces = [got[i] for i in range(start, stop)]
        return [(name, torch.cat(pieces) if flat else torch.stack(pieces), rows is not None)]


def _transforms(transform, name: str) -> bool:
    """Whether `transform` may change the weight `name` (one without a `names` set: any)."""
    return transform is not None and name in getattr(transform, "names", {name})


def _local_rows(target: torch.Tensor) -> tuple[int, int] | None:
    """The rows of dim 0 this process keeps of a DTensor sharded by rows only, else None."""
    if not isinstance(target, DTensor):
        return None
    sharded = [i for i, p in enumerate(target.placements) if p != Replicate()]
    if len(sharded) != 1 or target.placements[sharded[0]] != Shard(0):
        return None
    mesh_dim = sharded[0]
    rows, parts = target.shape[0], target.device_mesh.size(mesh_dim)
    chunk = -(-rows // parts)
    start = min(target.device_mesh.get_local_rank(mesh_dim) * chunk, rows)
    stop = min(start + chunk, rows)
    if (stop - start,) + tuple(target.shape[1:]) != tuple(target.to_local().shape):
        return None  # not torch.chunk's split after all: take the general path
    return start, stop


def _placed(part: torch.Tensor, target: torch.Tensor, device: torch.device, transform, name: str,
            is_local: bool) -> torch.Tensor:
    """`part` as the value of `target`: on `device`, transformed, and as this process's shard
    of a DTensor when the target is one."""
    if not isinstance(target, DTensor):
        part = part.to(device)
        return transform(name, part) if transform else part
    if _transforms(transform, name):  # the whole weight: see tunelib.quantization.nf4.nf4_transform
        local = _local_piece(transform(name, part.to(device)), target)
    else:
        local = (part if is_local else _local_piece(part, target)).to(device)
    return DTensor.from_local(local, target.device_mesh, target.placements, run_check=False,
                              shape=target.shape, stride=target.stride())


def _local_piece(full: torch.Tensor, target: DTensor) -> torch.Tensor:
    """This process's piece of `full` under `target`'s placements (torch.chunk per sharded mesh dim)."""
    piece = full
    for mesh_dim, placement in enumerate(target.placements):
        if placement == Replicate():
            continue
        if not isinstance(placement, Shard):
            raise CheckpointError(f"cannot load into a parameter placed as {placement}; only Shard and "
                                  "Replicate placements are supported")
        chunks = torch.chunk(piece, target.device_mesh.size(mesh_dim), dim=placement.dim)
        rank = target.device_mesh.get_local_rank(mesh_dim)
        piece = chunks[rank] if rank < len(chunks) else piece.narrow(placement.dim, 0, 0)
    # Its own contiguous memory, so the full tensor is freed after this (new_zeros + copy_ is
    # what torchao's NF4 tensor implements for FSDP; clone would keep strided inner tensors).
    own = piece.new_zeros(piece.shape)
    own.copy_(piece)
    return own


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
