"""Rotary position embeddings in Hugging Face's half-rotation layout.

Dimension i of a head is paired with dimension i + head_dim/2 (GPT-NeoX, HF Llama), not with
i + 1 (Meta's original code). Because HF checkpoints store q/k rows for this layout, weights
load with no permutation.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tunelib.models.config import DecoderConfig


def inverse_frequencies(head_dim: int, theta: float, scaling: dict | None) -> torch.Tensor:
    """The head_dim/2 rotation speeds theta^(-2i/head_dim), rescaled as `scaling` says. fp32."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    inv_freq = 1.0 / (theta ** exponents)  # (head_dim/2,)
    rope_type = (scaling or {}).get("rope_type")
    if rope_type == "linear":
        return inv_freq / scaling["factor"]
    if rope_type == "llama3":
        return _llama3_scaled(inv_freq, scaling)
    return inv_freq


def _llama3_scaled(inv_freq: torch.Tensor, s: dict) -> torch.Tensor:
    # Llama 3.1: wavelengths shorter than context/high_freq_factor are kept, longer than
    # context/low_freq_factor are slowed by `factor`, and those in between are blended.
    context, factor = s["original_max_position_embeddings"], s["factor"]
    low, high = s["low_freq_factor"], s["high_freq_factor"]
    wavelength = 2 * math.pi / inv_freq
    blend = ((context / wavelength - low) / (high - low)).clamp(0.0, 1.0)
    scaled = (1 - blend) * inv_freq / factor + blend * inv_freq
    scaled = torch.where(wavelength < context / high, inv_freq, scaled)
    return torch.where(wavelength > context / low, inv_freq / factor, scaled)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x` (B, heads, T, head_dim) by angles whose cos/sin are (B, T, head_dim)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)  # (B, heads, T, head_dim)
    return x * cos.unsqueeze(1) + rotated * sin.unsqueeze(1)


class RotaryEmbedding(nn.Module):
    """Turns positions into the cos/sin tables every attention layer shares."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        # Not saved in checkpoints (HF ignores it too); recomputed by reset_parameters on load.
        self.register_buffer("inv_freq", self._compute(), persistent=False)
        if config.rope_local_base_freq is not None:  # Gemma 3's sliding layers: their own base, unscaled
            self.register_buffer("local_inv_freq", self._compute(local=True), persistent=False)

    def _compute(self, device=None, *, local: bool = False) -> torch.Tensor:
        c = self.config
        if local:
            return inverse_frequencies(c.head_dim, c.rope_local_base_freq, None).to(device)
        return inverse_frequencies(c.head_dim, c.rope_theta, c.rope_scaling).to(device)

    def reset_parameters(self) -> None:
        """Recompute the frequencies on the buffer's device (after building on meta)."""
        self.inv_freq = self._compute(self.inv_freq.device)
        if self.config.rope_local_base_freq is not None:
            self.local_inv_freq = self._compute(self.local_inv_freq.device, local=True)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype, *,
                local: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape (B, T, head_dim) for integer positions (B, T), in `dtype`; with
        `local`, those of the sliding layers' own base (`rope_local_base_freq` must be set)."""
        inv_freq = self.local_inv_freq if local else self.inv_freq
        angles = position_ids[..., None].float() * inv_freq.float()  # (B, T, head_dim/2)
        angles = torch.cat((angles, angles), dim=-1)  # (B, T, head_dim)
        return angles.cos().to(dtype), angles.sin().to(dtype)
