"""Sharded (DTensor) parameters made whole for a moment: for a save, or a norm of the whole weight.

Under FSDP2 every parameter is a DTensor holding this process's rows. Writing a checkpoint,
merging an adapter or taking a DoRA magnitude needs some parameters whole; `whole_params`
gathers just those (every process must enter it alike: the gathers are collectives), puts
the whole tensors in place, and puts the shards back when it ends. Without sharding it does
nothing, so the same code serves one device and many.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

from torch import nn
from torch.distributed.tensor import DTensor


@contextlib.contextmanager
def whole_params(module: nn.Module, names: Iterable[str] | None = None) -> Iterator[nn.Module]:
    """Within the block, the parameters `names` of `module` (default: all) are whole tensors.

    Yields `module`. The whole tensors are detached copies (changing them changes nothing);
    the sharded parameters come back unchanged at the end, whatever happened.
    """
    wanted = None if names is None else set(names)
    sharded = {name: p for name, p in module.named_parameters(remove_duplicate=False)
               if isinstance(p, DTensor) and (wanted is None or name in wanted)}
    whole: dict[int, nn.Parameter] = {}
    try:
        for name, p in sharded.items():
            if id(p) not in whole:  # tied names share one gather
                whole[id(p)] = nn.Parameter(p.full_tensor().detach(), requires_grad=False)
            _set(module, name, whole[id(p)])
        yield module
    finally:
        for name, p in sharded.items():
            _set(module, name, p)


def is_sharded(module: nn.Module) -> bool:
    """Whether any parameter of `module` is a DTensor."""
    return any(isinstance(p, DTensor) for p in module.parameters())


def _set(module: nn.Module, name: str, value: nn.Parameter) -> None:
    owner, _, attr = name.rpartition(".")
    setattr(module.get_submodule(owner) if owner else module, attr, value)
