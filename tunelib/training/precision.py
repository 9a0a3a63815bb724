"""How trained weights are stored, stepped and computed when the model runs in bf16.

Two settings, each read here once:

- `adapter_dtype` (LoRA, DoRA, QLoRA, LLaMA-Adapter): the trained adapter weights are stored,
  stepped by the optimizer and saved in fp32 while the frozen base stays bf16, as PEFT does by
  default (`autocast_adapter_dtype=True`); `bf16` keeps them in the training dtype.
- `weight_precision` (full fine-tuning, dtype=bf16): `dtype` keeps bf16 weights rounded to
  nearest after each step; `fp32_master` stores fp32 weights and computes in bf16 (under
  `torch.autocast` on one device, FSDP2's `param_dtype` under torchrun);
  `stochastic_rounding` keeps bf16 weights and lets torchao's Adam round each update
  stochastically, so updates smaller than half a bf16 step still count on average.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from tunelib.training.runtime import DTYPES


def adapter_dtype(cfg: Any, dtype: torch.dtype) -> torch.dtype:
    """The dtype adapters are kept in: the config's `adapter_dtype`, or `dtype` without one."""
    name = getattr(cfg, "adapter_dtype", None)
    return dtype if name is None else DTYPES[name]


def stored_dtype(cfg: Any, dtype: torch.dtype) -> torch.dtype:
    """The dtype a full fine-tuning run stores its weights in: fp32 with fp32 master weights, else `dtype`."""
    return torch.float32 if getattr(cfg, "weight_precision", "dtype") == "fp32_master" else dtype


def optimizer_options(cfg: Any) -> dict[str, Any]:
    """Keyword arguments the optimizer is built with on top of the config's: torchao's
    `bf16_stochastic_round=True` under weight_precision=stochastic_rounding, else none."""
    if getattr(cfg, "weight_precision", "dtype") == "stochastic_rounding":
        return {"bf16_stochastic_round": True}
    return {}


def compute_in(loss: Callable, cfg: Any, device: torch.device, dtype: torch.dtype, *, sharded: bool) -> Callable:
    """`loss`, run under `torch.autocast(device, dtype)` when fp32 master weights are computed in
    `dtype` on one device; unchanged otherwise (FSDP2 casts sharded weights itself)."""
    if sharded or stored_dtype(cfg, dtype) == dtype:
        return loss
    return AutocastLoss(loss, device.type, dtype)


class AutocastLoss:
    """A loss whose forward (the model's included) runs under `torch.autocast`.

    Matmuls then take bf16 copies of the fp32 weights, and their gradients flow back to the
    fp32 weights; norms, softmax and the residual stream stay in fp32. Backward runs outside,
    as torch recommends. Other attributes (`host_inputs`) are the wrapped loss's.
    """

    def __init__(self, loss: Callable, device_type: str, dtype: torch.dtype):
        self.loss, self.device_type, self.dtype = loss, device_type, dtype

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.loss(model, batch)

    def __getattr__(self, name: str) -> Any:
        if name == "loss":  # not set yet (unpickling, copying): no recursion
            raise AttributeError(name)
        return getattr(self.loss, name)
