"""Optimizer-in-backward: step each parameter as soon as its gradient is complete.

Full fine-tuning then never holds the gradients of the whole model at once (an 8B model's
bf16 gradients are 16 GB). The price: no gradient accumulation and no clipping, since no step
ever sees all gradients together.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Iterable

import torch


class OptimizerInBackward(torch.optim.Optimizer):
    """One optimizer per parameter, stepped from a post-accumulate-grad hook.

    It is a torch Optimizer as far as learning-rate schedules are concerned: its
    `param_groups` are the per-parameter optimizers' own groups, so a schedule that sets
    `lr` on them reaches every parameter. `step` and `zero_grad` do nothing.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], make_optimizer: Callable[[list], torch.optim.Optimizer]):
        params = [p for p in params if p.requires_grad]
        self.optimizers = [make_optimizer([p]) for p in params]
        self.defaults = self.optimizers[0].defaults if self.optimizers else {}
        self.state = defaultdict(dict)
        self._optimizer_step_pre_hooks = {}
        self._optimizer_step_post_hooks = {}
        self._optimizer_state_dict_pre_hooks = {}
        self._optimizer_state_dict_post_hooks = {}
        self._optimizer_load_state_dict_pre_hooks = {}
        self._optimizer_load_state_dict_post_hooks = {}
        for param, opt in zip(params, self.optimizers):
            param.register_post_accumulate_grad_hook(_stepper(opt))

    @property
    def param_groups(self) -> list[dict]:
        # Read afresh each time: loading a state (here, or through torch.distributed.checkpoint,
        # which loads each per-parameter optimizer) replaces their group dicts.
        return [group for opt in self.optimizers for group in opt.param_groups]

    def step(self, closure=None):  # noqa: D102 - the hooks already stepped
        return None

    def zero_grad(self, set_to_none: bool = True) -> None:  # noqa: D102 - the hooks already cleared
        return None

    def state_dict(self) -> dict:
        return {"per_parameter": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        for opt, saved in zip(self.optimizers, state_dict["per_parameter"], strict=True):
            opt.load_state_dict(saved)


def _stepper(opt: torch.optim.Optimizer):
    def hook(_param: torch.Tensor) -> None:
        opt.step()
        opt.zero_grad(set_to_none=True)

    return hook
