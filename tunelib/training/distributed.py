"""One process or many: the little a training loop needs to know about its peers.

Under torchrun (WORLD_SIZE > 1) a process group is started, NCCL on CUDA (with gloo for CPU
tensors) and gloo on CPU, so the same recipe runs on 2 CPU processes in tests and on 8 GPUs in
production. With one process every collective is a no-op.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from tunelib.errors import ConfigError


@dataclass
class Dist:
    """This process's place in the job, and the device its collectives run on."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    watch_group: object = None  # a gloo side channel for finding out which rank stopped answering
    host_group: object = None  # where numbers the host already has are reduced (None: the default group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, device: torch.device, timeout_seconds: int = 600) -> "Dist":
        """Read torchrun's environment and start the process group when there are peers.

        A collective that waits longer than `timeout_seconds` (a peer died or hangs) raises
        on every waiting rank, so no rank waits forever.
        """
        world = int(os.environ.get("WORLD_SIZE", 1))
        me = cls(world, int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), device)
        if world > 1 and not dist.is_initialized():
            # gloo beside NCCL: with fsdp_cpu_offload the shards, gradients and optimizer state
            # are CPU tensors, and clipping, gathering and saving them are collectives NCCL cannot run.
            backend = "cuda:nccl,cpu:gloo" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_seconds))
            # After a timeout the main group's connections are closed and NCCL cannot say which
            # rank is silent; a gloo group of its own can still ask every rank.
            me.watch_group = dist.new_group(backend="gloo")
            if device.type == "cuda":
                # Numbers the host already has (token counts, peak memory) would otherwise be copied
                # to the GPU and read back: the read waits for every kernel queued before it.
                me.host_group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_seconds))
        return me

    def silent_ranks(self, seconds: float) -> list[int]:
        """Ranks that do not reach a barrier within `seconds` (after a collective timed out)."""
        if not self.enabled:
            return []
        try:
            dist.monitored_barrier(group=self.watch_group, timeout=datetime.timedelta(seconds=seconds),
                                   wait_all_ranks=True)
        except RuntimeError as e:
            import re

            found = re.search(r"[Rr]anks? ([\d, ]+) failed", str(e))
            return [int(r) for r in found.group(1).replace(" ", "").split(",") if r] if found else []
        return []

    def sum(self, value: float | int) -> float:
        """The sum of a number over all ranks."""
        return self.host_sum([value])[0]

    def host_sum(self, values: list[float | int]) -> list[float | int]:
        """The sums of numbers this host holds over all ranks, in one collective.

        With one process the values come back as given; under torchrun as floats. Reduced
        over gloo on CPU tensors, so nothing waits for a GPU.
        """
        if not self.enabled:
            return list(values)
        t = torch.tensor([float(v) for v in values], dtype=torch.float64)
        dist.all_reduce(t, group=self.host_group)
        return t.tolist()

    def max(self, value: float) -> float:
        """The largest value of a number over all ranks (a NaN on any rank wins)."""
        return self.host_max([value])[0]

    def host_max(self, values: list[float]) -> list[float]:
        """The largest value of each number over all ranks, in one collective (a NaN on any rank wins)."""
        if not self.enabled:
            return list(values)
        nan = [float(v != v) for v in values]
        t = torch.tensor(nan + [0.0 if v != v else float(v) for v in values], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.host_group)
        got = t.tolist()
        return [float("nan") if got[i] > 0 else got[len(values) + i] for i in range(len(values))]

    def ranks_where(self, flag: bool) -> list[int]:
        """The ranks on which `flag` is true (every rank learns the same list)."""
        if not self.enabled:
            return [0] if flag else []
        flags = [0.0] * self.world_size
        flags[self.rank] = float(flag)
        return [r for r, hit in enumerate(self.host_sum(flags)) if hit > 0]

    def device_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` (on this rank's device) over all ranks in place and return it, without
        reading it: the all-reduce is queued on the device like a kernel."""
        if self.enabled:
            dist.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def say(self, message: str) -> None:
        """Print once for the whole job (from rank 0)."""
        if self.is_main:
            print(message, flush=True)

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def mesh_shape(world_size: int, shard_dim: int, replicate_dim: int) -> tuple[int, int]:
    """The (replicate, shard) sizes of the data-parallel mesh from torchtune's two settings.

    `shard_dim=-1` takes what `replicate_dim` leaves of `world_size`.

    Raises:
        ConfigError: the two do not multiply to `world_size` (the message names both).
    """
    shard = world_size // replicate_dim if shard_dim == -1 else shard_dim
    if replicate_dim * shard == world_size:
        return replicate_dim, shard
    asked = f"data_parallel_replicate_dim={replicate_dim} and data_parallel_shard_dim={shard_dim}"
    if shard_dim == -1:
        raise ConfigError(f"{asked}: the world size {world_size} is not a multiple of {replicate_dim}, so the shard "
                          f"dim cannot take the rest; use a data_parallel_replicate_dim that divides {world_size}")
    raise ConfigError(f"{asked} multiply to {replicate_dim * shard}, but the world size (nnodes x nproc_per_node) is "
                      f"{world_size}; make their product {world_size}, or set data_parallel_shard_dim=-1")


def sync_gradients(model: torch.nn.Module, mode: str, *, last: bool) -> None:
    """Before a micro-batch's backward: say whether FSDP2 reduces its gradients across ranks.

    Takes the model (FSDP2-sharded, or not: one process has nothing to reduce), `mode`
    (`fsdp_gradient_sync`: "last_micro_batch" or "every_micro_batch") and whether this is the
    last micro-batch of the step. Returns nothing.
    """
    if not hasattr(model, "set_requires_gradient_sync"):
        return
    if mode == "last_micro_batch":
        # FSDP2 adds the unsharded gradients up locally and reduces once: one reduce-scatter
        # (and one HSDP all-reduce) per step instead of one per micro-batch.
        model.set_requires_gradient_sync(last)
    else:
        # The reduce-scatter runs each time so gradients stay sharded; only the all-reduce
        # across replicas, the slow inter-node one under HSDP, waits for the last micro-batch.
        model.set_requires_gradient_sync(True)
        model.set_requires_all_reduce(last)
