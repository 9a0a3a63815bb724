"""One process or many: the little a training loop needs to know about its peers.

Under torchrun (WORLD_SIZE > 1) a process group is started, NCCL on CUDA and gloo on CPU, so
the same recipe runs on 2 CPU processes in tests and on 8 GPUs in production. With one
process every collective is a no-op.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    """This process's place in the job."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, device_type: str, timeout_seconds: int = 600) -> "Dist":
        """Read torchrun's environment and start the process group when there are peers."""
        world = int(os.environ.get("WORLD_SIZE", 1))
        me = cls(world, int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)))
        if world > 1 and not dist.is_initialized():
            backend = "nccl" if device_type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_seconds))
        return me

    def sum(self, value: float | int, device: torch.device) -> float:
        """The sum of a number over all ranks."""
        if not self.enabled:
            return value
        t = torch.tensor(float(value), dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.item()

    def max(self, value: float, device: torch.device) -> float:
        """The largest value of a number over all ranks (a NaN on any rank wins)."""
        if not self.enabled:
            return value
        t = torch.tensor(float(value), dtype=torch.float64, device=device)
        nan = torch.isnan(t).to(torch.float64)
        dist.all_reduce(nan)
        if nan.item() > 0:
            return float("nan")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.item()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()
