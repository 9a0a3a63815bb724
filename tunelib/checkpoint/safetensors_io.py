"""safetensors files read and written one tensor at a time, without mapping the file.

The format is a little-endian u64 header length, a JSON header naming each tensor's dtype,
shape and byte range, then the bytes. Reading a tensor (or a range of its rows) with plain
file reads puts it straight into fresh memory: nothing of the file stays mapped, so a model
loaded from it costs its bytes once, and a process that keeps only some rows of a weight
(its FSDP2 shard) reads only those. Writing takes the tensors' shapes and dtypes first, so
the header is written before any data, and then each tensor as it is produced: a writer
never holds more than one tensor.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

import torch

from tunelib.errors import CheckpointError

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
NAMES = {dtype: name for name, dtype in DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024  # the format's own limit: a larger header means a damaged file


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lies in a file: dtype, shape, and its byte range from the data's start."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def row_bytes(self) -> int:
        return (self.end - self.start) // self.shape[0] if self.shape and self.shape[0] else 0


class SafetensorsReader:
    """Read the tensors of one .safetensors file by name, whole or by rows of their first dim.

    Use as a context manager; the file is open (not mapped) while it lasts.

    Raises:
        CheckpointError: the header is not a safetensors header, or a tensor lies beyond the
            end of the file (an interrupted download).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file: BinaryIO = open(self.path, "rb")
        try:
            self.infos, self._data_start = self._read_header()
        except BaseException:
            self._file.close()
            raise

    def __enter__(self) -> "SafetensorsReader":
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()

    def keys(self) -> list[str]:
        return list(self.infos)

    def meta(self, key: str) -> torch.Tensor:
        """A meta tensor of the stored shape and dtype (nothing read)."""
        info = self.infos[key]
        return torch.empty(info.shape, dtype=info.dtype, device="meta")

    def read(self, key: str) -> torch.Tensor:
        """The whole tensor, in fresh CPU memory."""
        info = self.infos[key]
        return self._read_into(torch.empty(info.shape, dtype=info.dtype), info.start)

    def read_rows(self, key: str, start: int, stop: int) -> torch.Tensor:
        """Rows `start:stop` of the tensor's first dimension, in fresh CPU memory."""
        info = self.infos[key]
        stop = min(stop, info.shape[0])
        start = min(start, stop)
        out = torch.empty((stop - start, *info.shape[1:]), dtype=info.dtype)
        return self._read_into(out, info.start + start * info.row_bytes)

    def _read_into(self, out: torch.Tensor, offset: int) -> torch.Tensor:
        size = out.numel() * out.element_size()
        if size == 0:
            return out
        self._file.seek(self._data_start + offset)
        view = memoryview(out.reshape(-1).view(torch.uint8).numpy())
        got = self._file.readinto(view)
        if got != size:
            raise _damaged(self.path, f"a tensor needs {size} bytes but the file ends after {got}")
        return out

    def _read_header(self) -> tuple[dict[str, TensorInfo], int]:
        raw = self._file.read(8)
        if len(raw) != 8:
            raise _damaged(self.path, "it is shorter than a safetensors header")
        (length,) = struct.unpack("<Q", raw)
        if length > _MAX_HEADER:
            raise _damaged(self.path, "its header length is not that of a safetensors file")
        try:
            header = json.loads(self._file.read(length))
        except (ValueError, UnicodeDecodeError):
            raise _damaged(self.path, "its header is not valid JSON") from None
        file_size = os.fstat(self._file.fileno()).st_size
        infos = {}
        for key, entry in header.items():
            if key == "__metadata__":
                continue
            infos[key] = _info(self.path, key, entry, file_size - 8 - length)
        return infos, 8 + length


def _info(path: Path, key: str, entry, data_size: int) -> TensorInfo:
    try:
        dtype, shape, (start, end) = DTYPES[entry["dtype"]], tuple(entry["shape"]), entry["data_offsets"]
    except (KeyError, TypeError, ValueError):
        raise _damaged(path, f"its header entry for '{key}' is not a tensor's") from None
    if end > data_size or end - start != math.prod(shape) * _itemsize(dtype):
        raise _damaged(path, f"tensor '{key}' lies beyond the end of the file")
    return TensorInfo(dtype, shape, start, end)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _damaged(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"cannot read {path}: {why}; the file is damaged or incomplete (download it again)")


# -- writing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Planned:
    """A tensor to write: its name, shape and dtype, known before its values are."""

    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _itemsize(self.dtype)


def plan_shards(tensors: list[Planned], max_shard_size: int) -> list[list[Planned]]:
    """Split `tensors` in order into shards of at most `max_shard_size` bytes (a larger
    tensor gets a shard of its own), as Hugging Face shards a model."""
    shards: list[list[Planned]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return [s for s in shards if s]


class SafetensorsWriter:
    """Write one .safetensors file: the header at once, then each planned tensor in turn.

    Tensors must come in the planned order with the planned shape and dtype; `close()`
    checks that all came.
    """

    def __init__(self, path: Path, planned: list[Planned], metadata: dict[str, str] | None = None):
        self.path, self._planned = Path(path), list(planned)
        header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
        offset = 0
        for t in self._planned:
            header[t.key] = {"dtype": NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
            offset += t.nbytes
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as other writers leave it
        self._file = open(self.path, "wb")
        self._file.write(struct.pack("<Q", len(text)) + text)
        self._next = 0

    def write(self, key: str, tensor: torch.Tensor) -> None:
        """Append the next planned tensor's bytes.

        Raises:
            ValueError: `key`, its shape or dtype is not the one planned next.
        """
        expected = self._planned[self._next]
        if (key, tuple(tensor.shape), tensor.dtype) != (expected.key, expected.shape, expected.dtype):
            raise ValueError(f"expected {expected} next, got {key} {tuple(tensor.shape)} {tensor.dtype}")
        data = tensor.detach().to("cpu").contiguous().reshape(-1)
        if data.numel():
            self._file.write(memoryview(data.view(torch.uint8).numpy()))
        self._next += 1

    def close(self) -> None:
        """Flush and close; raises ValueError if a planned tensor was never written."""
        self._file.close()
        if self._next != len(self._planned):
            raise ValueError(f"{self.path}: {len(self._planned) - self._next} planned tensors were not written")

    def abort(self) -> None:
        self._file.close()


def shard_names(count: int) -> list[str]:
    """Hugging Face's shard file names: model.safetensors, or model-00001-of-00004.safetensors ..."""
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def write_index(folder: Path, shards: list[list[Planned]], names: list[str]) -> None:
    """model.safetensors.index.json for a sharded folder (nothing for one file)."""
    if len(shards) < 2:
        return
    weight_map = {t.key: name for shard, name in zip(shards, names) for t in shard}
    total = sum(t.nbytes for shard in shards for t in shard)
    (Path(folder) / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, sort_keys=True) + "\n")


def write_streamed(folder: Path, groups: Iterable[tuple[list[Planned], Callable[[], dict[str, torch.Tensor] | None]]],
                   max_shard_size: int, writer: bool = True) -> None:
    """Write tensors that arrive group by group as an HF weights folder (shards and index).

    Args:
        folder: the folder to write into.
        groups: (planned tensors, produce) pairs in writing order; `produce()` returns the
            group's tensors by key (or None on a process that writes nothing), and is called
            on every process, in order, so that gathering collectives inside it line up.
        max_shard_size: bytes per shard file at most.
        writer: False on processes that only take part in the gathering.
    """
    groups = list(groups)
    planned = [t for plan, _ in groups for t in plan]
    shards = plan_shards(planned, max_shard_size)
    names = shard_names(len(shards))
    file_of = {t.key: i for i, shard in enumerate(shards) for t in shard}
    open_writers: dict[int, SafetensorsWriter] = {}
    try:
        for plan, produce in groups:
            tensors = produce()
            if not writer:
                continue
            for t in plan:
                index = file_of[t.key]
                if index not in open_writers:
                    for done in [i for i in open_writers if i < index]:
                        open_writers.pop(done).close()
                    open_writers[index] = SafetensorsWriter(Path(folder) / names[index], shards[index])
                open_writers[index].write(t.key, tensors[t.key])
            del tensors
        for w in open_writers.values():
            w.close()
    except BaseException:
        for w in open_writers.values():
            w.abort()
        raise
    if writer:
        write_index(folder, shards, names)
