"""RMSNorm, in the two rounding orders checkpoints were trained with."""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """x / rms(x) * scale, normalised in fp32.

    With `offset=0` (Llama, Qwen, Mistral, Phi) the scale is the weight and the product is taken
    after casting back to the input dtype. With `offset=1` (Gemma) the scale is (1 + weight) and
    the product is taken in fp32 before the cast; the two orders round differently in bf16.
    """

    def __init__(self, dim: int, eps: float, offset: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim))
        self.eps, self.offset = eps, offset
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Start as the identity scale: weight 1, or 0 when stored as an offset from 1."""
        nn.init.constant_(self.weight, 1.0 - self.offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.offset:
            return (normed * (self.offset + self.weight.float())).type_as(x)
        # The weight in the input's dtype: one trained in fp32 (LLaMA-Adapter v2) must not turn
        # the bf16 residual stream into fp32.
        return self.weight.type_as(x) * normed.type_as(x)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}" + (f", offset={self.offset}" if self.offset else "")
