"""DoRA (Liu et al. 2024): LoRA with a learned magnitude per output row, computed as PEFT does.

`W' = m ⊙ (W + s·BA) / ‖W + s·BA‖`, the norm taken per output row of the (out, in) weight and
detached from the graph (the paper's memory saving). The norm and the scale m / ‖·‖ are computed
in fp32 whatever the dtypes of base and adapters; the magnitude is stored in the adapters' dtype
(fp32 by default), so a layer starts as exactly its base layer, in bf16 too. The bias is added
unscaled, as in PEFT (torchtune scales it, which differs for layers with a bias such as Qwen2's
q/k/v).

The magnitude `lora_magnitude_vector` (PEFT's name, no `.weight`) must start at the norm of
the *loaded* base weight, so `initialize_adapters` sets it after loading, from the
dequantised weight under QLoRA.
"""

from __future__ import annotations

import torch
from torch import nn

from tunelib.peft.lora import LoRAEmbedding, LoRALinear, LoraSpec
from tunelib.quantization import nf4


class DoRALinear(LoRALinear):
    """LoRALinear plus `lora_magnitude_vector (out,)`."""

    @classmethod
    def from_linear(cls, linear: nn.Linear, spec: LoraSpec, *, quantize_base: bool = False) -> DoRALinear:
        module = super().from_linear(linear, spec, quantize_base=quantize_base)
        module.lora_magnitude_vector = nn.Parameter(
            torch.empty(linear.out_features, device="meta", dtype=module.lora_A.weight.dtype)
        )
        return module

    def weight_norm(self) -> torch.Tensor:
        """‖W + s·BA‖ per output row in fp32, shape (out,), detached (NF4 is dequantised)."""
        with torch.no_grad():
            return torch.linalg.norm(nf4.dequantize(self.weight, torch.float32) + self.delta_weight(), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_forward(x)  # (..., out), in the activations' dtype
        x = x.to(self.lora_A.weight.dtype)
        scale = _scale(self.lora_magnitude_vector, self.weight_norm()).view(1, -1)  # (1, out), fp32
        if self.training and isinstance(self.lora_dropout, nn.Dropout):
            # PEFT recomputes the base product on the dropped-out input when dropout is active;
            # here in the base's dtype, like the base forward, so backward keeps no fp32 (or
            # dequantised NF4) copy of the weight.
            x = self.lora_dropout(x)
            base = nf4.linear(x.to(out.dtype), self.weight)
        else:
            base = out if self.bias is None else out - self.bias
        lora = self.lora_B(self.lora_A(x)) * self.scaling
        # Summed in fp32 and rounded once, as PEFT does; at step 0 scale is exactly 1 and B is 0,
        # so the layer returns the base output bit for bit.
        return (out + ((scale - 1) * base + scale * lora)).to(out.dtype)

    def merged_weight(self) -> torch.Tensor:
        """`(m / ‖W + s·BA‖) ⊙ (W + s·BA)` per row, computed in fp32, in the base dtype."""
        base = nf4.dequantize(self.weight)
        updated = base.float() + self.delta_weight()
        scale = self.lora_magnitude_vector.float() / torch.linalg.norm(updated, dim=1)
        return (scale.view(-1, 1) * updated).to(base.dtype)

    def reset_magnitude(self) -> None:
        """Set the magnitude to the current ‖W + s·BA‖ (‖W‖ right after init), in the adapters' dtype."""
        like = self.lora_A.weight
        self.lora_magnitude_vector = nn.Parameter(self.weight_norm().to(device=like.device, dtype=like.dtype))


class DoRAEmbedding(LoRAEmbedding):
    """LoRAEmbedding plus `lora_magnitude_vector (hidden,)`, as PEFT's DoRA embedding.

    The embedding table is (vocab, hidden); PEFT treats it as the transposed linear weight, so
    the norm runs over the vocabulary for each hidden unit and the magnitude scales columns.
    """

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, spec: LoraSpec) -> DoRAEmbedding:
        module = super().from_embedding(embedding, spec)
        module.lora_magnitude_vector = nn.Parameter(
            torch.empty(embedding.embedding_dim, device="meta", dtype=module.lora_embedding_A.dtype)
        )
        return module

    def weight_norm(self) -> torch.Tensor:
        """‖E + s·(BA)ᵀ‖ over the vocabulary in fp32, shape (hidden,), detached."""
        with torch.no_grad():
            return torch.linalg.norm(self.weight.float() + self.delta_weight(), dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = nn.Embedding.forward(self, x)
        scale = _scale(self.lora_magnitude_vector, self.weight_norm())  # (hidden,), fp32
        return (scale * out + scale * self.lora_forward(x)).to(out.dtype)

    def merged_weight(self) -> torch.Tensor:
        """`E' = (m / ‖E + ΔE‖) ⊙ (E + ΔE)` per column, computed in fp32, in the base dtype."""
        updated = self.weight.float() + self.delta_weight()
        scale = self.lora_magnitude_vector.float() / torch.linalg.norm(updated, dim=0)
        return (scale.view(1, -1) * updated).to(self.weight.dtype)

    def reset_magnitude(self) -> None:
        """Set the magnitude to the current ‖E + ΔE‖ (‖E‖ right after init), in the adapters' dtype."""
        like = self.lora_embedding_A
        self.lora_magnitude_vector = nn.Parameter(self.weight_norm().to(device=like.device, dtype=like.dtype))


def _scale(magnitude: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """m / ‖W'‖ in fp32, the fp32 norm first rounded to the magnitude's dtype: the magnitude was
    set from that same rounded norm, so the scale starts at exactly 1 in fp32 or bf16."""
    return magnitude.float() / norm.to(magnitude.dtype).float()
