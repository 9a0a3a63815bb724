"""Counting what makes a GPU wait, on a machine without one.

On a GPU, every time the host reads device memory (`.item()`, `.tolist()`, `int(t)`,
`bool(t)`, `.cpu()`, `.numpy()`, or an op whose output size depends on the data, such as
`nonzero`) it waits for every kernel queued before. `DeviceReads` plays the GPU on a CPU run:
a tensor counts as on the device when it is a parameter or buffer of the model, was moved
with `.to(device)`, or was computed from such a tensor (followed op by op through a
TorchDispatchMode, backward included). Each host read of one is recorded with the training
step it happened in and the line of tunelib that did it.

Not seen: a `.to(device)` of a device tensor back to the host (on a CPU run "the device" is
the CPU), and blocking host-to-device copies.

`ReductionCountingLoss` (allowed with TUNELIB_ALLOW_MODULES=support, like faults.py) counts
the all-reduces over the whole world a rank starts, as the loss of each training micro-batch
is called, into `record_dir/rank<R>.json`.
"""

from __future__ import annotations

import contextlib
import json
import os
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakTensorKeyDictionary

from tunelib.training import LinearCrossEntropyLoss

aten = torch.ops.aten
# Ops that must know device values on the host before they can return.
SYNC_OPS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
            aten.equal.default, aten.is_nonzero.default, aten._unique2.default, aten.unique_consecutive.default,
            aten.repeat_interleave.Tensor}
READ_METHODS = ("tolist", "numpy", "cpu")


class DeviceReads(TorchDispatchMode):
    """Record host reads of device tensors while active (`with probe:`), as (step, where) pairs."""

    def __init__(self):
        super().__init__()
        self.on_device = WeakTensorKeyDictionary()
        self.reads: list[tuple[int, str, str]] = []  # (step, what, where)
        self.step = lambda: 0
        self.counting = True

    def mark(self, *tensors: torch.Tensor) -> None:
        for t in tensors:
            if isinstance(t, torch.Tensor):
                self.on_device[t] = True

    def is_device(self, t) -> bool:
        return isinstance(t, torch.Tensor) and t in self.on_device

    def read(self, what: str) -> None:
        if not self.counting:
            return
        ours = [f for f in traceback.extract_stack() if "/tunelib/" in f.filename]
        where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "elsewhere"
        self.reads.append((self.step(), what, where))

    @contextlib.contextmanager
    def paused(self):
        self.counting = False
        try:
            yield
        finally:
            self.counting = True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        from_device = any(self.is_device(t) for t in pytree.tree_leaves((args, kwargs)))
        if from_device and func in SYNC_OPS:
            self.read(str(func))
        out = func(*args, **kwargs)
        if from_device:
            self.mark(*pytree.tree_leaves(out))
        return out

    def patch_methods(self, monkeypatch) -> None:
        """Count `.tolist()`, `.numpy()`, `.cpu()` of device tensors; `.to(device)` makes one."""
        for name in READ_METHODS:
            original = getattr(torch.Tensor, name)

            def reading(tensor, *args, _original=original, _name=name, **kwargs):
                if self.is_device(tensor):
                    self.read(_name)
                return _original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, reading)
        to = torch.Tensor.to

        def moving(tensor, *args, **kwargs):
            out = to(tensor, *args, **kwargs)
            device = torch._C._nn._parse_to(*args, **kwargs)[0]
            if device is not None:
                self.mark(out)
            return out

        monkeypatch.setattr(torch.Tensor, "to", moving)


def probe_training(monkeypatch) -> DeviceReads:
    """A DeviceReads that watches the next `tunelib.training.train` in this process, from its
    first step to its first save (saves read weights on purpose), with the model on the 'device'."""
    from tunelib.training import loop

    probe = DeviceReads()
    probe.patch_methods(monkeypatch)
    train = loop._train

    def watched(run):
        probe.mark(*run.model.parameters(), *run.model.buffers())
        probe.step = lambda: run.state.step
        save = run.save

        def saving(run, final):
            with probe.paused():
                return save(run, final)

        run.save = saving
        with probe:
            return train(run)

    monkeypatch.setattr(loop, "_train", watched)
    return probe


class ReductionCountingLoss(LinearCrossEntropyLoss):
    """The usual loss; records, at each training micro-batch, how many `dist.all_reduce` calls
    this rank has made so far (the loop's: FSDP2 makes none without HSDP, and the gradient
    norm's goes through functional collectives)."""

    def __init__(self, record_dir: str, num_output_chunks: int = 8):
        super().__init__(num_output_chunks)
        self.path = Path(record_dir) / f"rank{os.environ.get('RANK', 0)}.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.count, self.entries = 0, []
        all_reduce = dist.all_reduce

        def counted(*args, **kwargs):
            self.count += 1
            return all_reduce(*args, **kwargs)

        dist.all_reduce = counted

    def __call__(self, model, batch):
        if torch.is_grad_enabled():
            self.entries.append(self.count)
            self.path.write_text(json.dumps(self.entries))
        return super().__call__(model, batch)
