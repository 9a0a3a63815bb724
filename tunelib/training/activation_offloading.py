"""Activation offloading: what forward saves for backward waits in CPU memory, not on the GPU.

With activation checkpointing, each decoder layer keeps only its input (B, T, hidden) for
backward and recomputes the rest, so n layers keep n such tensors on the device from forward
to backward. Offloading moves each of them, as autograd saves it, to pinned CPU memory on a
side CUDA stream (the copy overlaps with the next layer's compute), and brings it back when
backward reaches its layer, starting the copy of the layer below at the same time.

It is built on `torch.autograd.graph.saved_tensors_hooks`. `ActivationOffloader` decides what
leaves the device: large activations only, never parameters or views of them (those stay on
the device anyway, so a copy would free nothing). How a tensor travels is a small strategy, a
mover: `CudaHostMover` on the GPU; tests give their own mover that copies between CPU tensors,
so the bookkeeping is checked without a GPU.

The CUDA path has not been measured on a GPU yet (none was available when it was written).
"""

from __future__ import annotations

import weakref
from collections import deque
from contextlib import AbstractContextManager
from typing import Any, Protocol

import torch
from torch import nn

# A copy costs a kernel launch and a stream synchronisation whatever its size: below this the
# memory freed is not worth it (a bf16 layer input of 2 x 2048 x 4096 is 32 MiB).
DEFAULT_MIN_BYTES = 2**20


class Mover(Protocol):
    """Moves a tensor off its device and back; `ActivationOffloader` decides which tensors."""

    device_type: str  # tensors on other device types are left where they are

    def offload(self, tensor: torch.Tensor) -> Any:
        """Start moving `tensor` away; return a handle that `restore` turns back into it."""

    def prefetch(self, handle: Any) -> None:
        """Start bringing `handle` back, because backward will ask for it next."""

    def restore(self, handle: Any) -> torch.Tensor:
        """The tensor, equal to the one offloaded, ready for use on the current stream."""


class _Packed:
    """What autograd keeps in place of an offloaded tensor."""

    __slots__ = ("handle", "below", "__weakref__")

    def __init__(self, handle: Any, below: weakref.ref | None):
        self.handle = handle
        # The tensor saved just before this one: backward, running in reverse, wants it next.
        self.below = below


def _keep(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


class ActivationOffloader:
    """Saved-tensor hooks that hand large activations to a mover and take them back in backward.

    Args:
        mover: moves tensors off the device and back (`CudaHostMover`, or a test's own).
        min_bytes: tensors smaller than this stay where they are.

    Attributes `offloaded` and `offloaded_bytes` count the tensors handed to the mover so far.
    """

    def __init__(self, mover: Mover, min_bytes: int = DEFAULT_MIN_BYTES):
        self.mover = mover
        self.min_bytes = min_bytes
        self.offloaded = 0
        self.offloaded_bytes = 0
        self._last: weakref.ref | None = None

    def hooks(self) -> AbstractContextManager:
        """A context manager: tensors autograd saves inside it go through this offloader."""
        return torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    @staticmethod
    def kept() -> AbstractContextManager:
        """A context manager inside `hooks()` whose saved tensors stay on the device, for work
        whose backward comes first (copying those out and straight back would only stall it)."""
        return torch.autograd.graph.saved_tensors_hooks(_keep, _keep)

    def should_offload(self, tensor: torch.Tensor) -> bool:
        """True when `tensor` is a plain activation on the mover's device of at least `min_bytes`."""
        return (
            type(tensor) is torch.Tensor  # not a parameter, nor a subclass (fake, NF4, DTensor) we cannot copy as bytes
            and not isinstance(tensor._base, nn.Parameter)  # a view of a weight (`weight.t()` in a linear)
            and tensor.device.type == self.mover.device_type
            and tensor.numel() * tensor.element_size() >= self.min_bytes
            # A contiguous tensor comes back with the same strides; other layouts stay put.
            and tensor.is_contiguous()
        )

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor | _Packed:
        if not self.should_offload(tensor):
            return tensor
        packed = _Packed(self.mover.offload(tensor), self._last)
        self._last = weakref.ref(packed)
        self.offloaded += 1
        self.offloaded_bytes += tensor.numel() * tensor.element_size()
        return packed

    def _unpack(self, packed: torch.Tensor | _Packed) -> torch.Tensor:
        if isinstance(packed, torch.Tensor):
            return packed
        tensor = self.mover.restore(packed.handle)
        below = packed.below() if packed.below is not None else None
        if below is not None:
            self.mover.prefetch(below.handle)
        return tensor


class _HostCopy:
    """One activation on its way to pinned CPU memory and back."""

    __slots__ = ("host", "copied", "on_device", "fetched", "fetch_done", "restored")

    def __init__(self, host: torch.Tensor, copied: torch.cuda.Event, on_device: torch.Tensor):
        self.host = host
        self.copied = copied  # recorded on the side stream after the copy to `host`
        self.on_device: torch.Tensor | None = on_device  # held until that copy has finished
        self.fetched: torch.Tensor | None = None  # the copy back, once started
        self.fetch_done: torch.cuda.Event | None = None
        self.restored = False


class CudaHostMover:
    """Moves CUDA tensors to pinned CPU memory and back on a side stream.

    Args:
        device: the CUDA device training runs on.

    Raises RuntimeError (from torch) when CUDA is not available.
    """

    device_type = "cuda"

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device)
        self._in_flight: deque[_HostCopy] = deque()

    def offload(self, tensor: torch.Tensor) -> _HostCopy:
        """Queue the copy of `tensor` to pinned memory on the side stream; return its handle."""
        self._forget_finished()
        compute = torch.cuda.current_stream(tensor.device)
        # The copy must read the activation as computed: wait for what is queued so far.
        self.stream.wait_stream(compute)
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        with torch.cuda.stream(self.stream):
            host.copy_(tensor, non_blocking=True)
            copied = self.stream.record_event()
        item = _HostCopy(host, copied, tensor)
        self._in_flight.append(item)
        return item

    def prefetch(self, handle: _HostCopy) -> None:
        """Start copying `handle` back to the device unless it is there or was already restored."""
        if handle.on_device is None and handle.fetched is None and not handle.restored:
            self._fetch(handle)

    def restore(self, handle: _HostCopy) -> torch.Tensor:
        """The tensor on the device, with the compute stream made to wait for its copy."""
        compute = torch.cuda.current_stream(self.device)
        handle.restored = True
        if handle.on_device is not None:
            # Still held: its copy out may be running, and the memory must not be reused under it.
            compute.wait_event(handle.copied)
            tensor, handle.on_device = handle.on_device, None
            return tensor
        if handle.fetched is None:
            self._fetch(handle)
        compute.wait_event(handle.fetch_done)
        tensor, handle.fetched = handle.fetched, None
        return tensor

    def _fetch(self, handle: _HostCopy) -> None:
        compute = torch.cuda.current_stream(self.device)
        # Allocated for the compute stream, which uses and frees it; the side stream first waits
        # for the compute stream, whose earlier work may still be using that memory.
        tensor = torch.empty(handle.host.shape, dtype=handle.host.dtype, device=self.device)
        self.stream.wait_stream(compute)
        with torch.cuda.stream(self.stream):
            tensor.copy_(handle.host, non_blocking=True)
            handle.fetch_done = self.stream.record_event()
        # If backward is abandoned before `restore`, the tensor is freed while the side stream may
        # still be writing it; this keeps its memory from being reused until that write is done.
        tensor.record_stream(self.stream)
        handle.fetched = tensor

    def _forget_finished(self) -> None:
        # Events on one stream complete in order: drop device tensors whose copy out is done, so
        # the allocator can reuse their memory; the host copy now stands in for them.
        while self._in_flight and self._in_flight[0].copied.query():
            self._in_flight.popleft().on_device = None
