"""LoRA layers that keep Hugging Face's parameter names.

`LoRALinear` is still an `nn.Linear` owning `weight` and `bias`, so a base checkpoint key such
as `model.layers.0.self_attn.q_proj.weight` loads into it unchanged, and its adapter keys
(`...q_proj.lora_A.weight`, `...q_proj.lora_B.weight`) are PEFT's keys without the
`base_model.model.` prefix. `LoRAEmbedding` does the same for `nn.Embedding` with PEFT's bare
`lora_embedding_A` / `lora_embedding_B` parameters.

Math (Hu et al. 2021, as PEFT computes it): `h = W x + b + s · B A dropout(x)` with
`s = alpha / r`, or `alpha / sqrt(r)` for rsLoRA. Adapters are created on the meta device and
given values by `tunelib.peft.initialize_adapters`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tunelib.quantization import nf4


@dataclass(frozen=True)
class LoraSpec:
    """The adapter settings of one module."""

    rank: int
    alpha: float
    dropout: float = 0.0
    use_rslora: bool = False
    use_dora: bool = False

    @property
    def scaling(self) -> float:
        """The factor on B·A: alpha/r, or alpha/sqrt(r) with rsLoRA."""
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)


def _adapter_dtype(weight: torch.Tensor) -> torch.dtype:
    # An NF4 weight reports the dtype it was quantized from, which is the training dtype.
    return weight.dtype if weight.dtype.is_floating_point else torch.float32


class LoRALinear(nn.Linear):
    """`nn.Linear` plus a low-rank update `s · B A` on a dropout of its input.

    Parameters: `weight (out, in)`, `bias (out,)` or None, `lora_A.weight (r, in)`,
    `lora_B.weight (out, r)`. With `quantize_base` the weight is a frozen NF4 tensor (QLoRA).
    """

    @classmethod
    def from_linear(cls, linear: nn.Linear, spec: LoraSpec, *, quantize_base: bool = False) -> LoRALinear:
        """Wrap `linear`'s own weight and bias tensors (shared, not copied) with meta adapters."""
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.in_features, module.out_features = linear.in_features, linear.out_features
        module.weight = linear.weight
        module.bias = linear.bias
        module.spec = spec
        module.scaling = spec.scaling
        module.quantize_base = quantize_base or getattr(linear, "quantize_base", False)
        dtype = _adapter_dtype(linear.weight)
        module.lora_A = nn.Linear(linear.in_features, spec.rank, bias=False, device="meta", dtype=dtype)
        module.lora_B = nn.Linear(spec.rank, linear.out_features, bias=False, device="meta", dtype=dtype)
        module.lora_dropout = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        return module

    def base_forward(self, x: torch.Tensor) -> torch.Tensor:
        """`W x + b` without the adapter (W may be NF4)."""
        if self.quantize_base:
            return nf4.linear(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_forward(x)
        # Adapters may be kept in another dtype than the activations (fp32 on a bf16 base by
        # default, PEFT's autocast_adapter_dtype): they then compute in their own dtype.
        a = self.lora_A(self.lora_dropout(x.to(self.lora_A.weight.dtype))) * self.scaling  # (..., r)
        if a.dtype != out.dtype:
            # The sum is taken in the adapters' dtype and rounded once, as PEFT does.
            return (out + self.lora_B(a)).to(out.dtype)
        # out + B(s·A x) in one addmm: the sum rides in the matmul instead of another pass over
        # (..., out), and s scales r columns rather than out_features.
        flat = out.reshape(-1, out.shape[-1])  # (N, out)
        return torch.addmm(flat, a.reshape(-1, a.shape[-1]), self.lora_B.weight.t()).view(out.shape)

    def delta_weight(self) -> torch.Tensor:
        """`s · B A` in fp32, shape (out, in)."""
        return self.scaling * (self.lora_B.weight.float() @ self.lora_A.weight.float())

    def merged_weight(self) -> torch.Tensor:
        """The plain weight equal to base plus adapter, computed in fp32, in the base dtype."""
        base = nf4.dequantize(self.weight)
        return (base.float() + self.delta_weight()).to(base.dtype)

    def reset_adapter_parameters(self, device: torch.device | str, dtype: torch.dtype) -> None:
        """PEFT's default init, drawn on the CPU generator: A kaiming-uniform (a=√5), B zeros; ΔW = 0."""
        a = torch.empty(self.lora_A.weight.shape)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.lora_A.weight = _parameter(a, device, dtype)
        self.lora_B.weight = _parameter(torch.zeros(self.lora_B.weight.shape), device, dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.spec.rank}, alpha={self.spec.alpha}, scaling={self.scaling:g}"


class LoRAEmbedding(nn.Embedding):
    """`nn.Embedding` plus a low-rank update: `E[x] + s · (Aᵀ[x]) Bᵀ`.

    Parameters: `weight (vocab, hidden)`, `lora_embedding_A (r, vocab)`,
    `lora_embedding_B (hidden, r)`. As in PEFT there is no dropout, and A starts at zero
    while B is drawn from N(0, 1).
    """

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, spec: LoraSpec) -> LoRAEmbedding:
        """Wrap `embedding`'s own weight tensor (shared, not copied) with meta adapters."""
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        for attr in ("num_embeddings", "embedding_dim", "padding_idx", "max_norm", "norm_type",
                     "scale_grad_by_freq", "sparse"):
            setattr(module, attr, getattr(embedding, attr))
        module.weight = embedding.weight
        module.spec = spec
        module.scaling = spec.scaling
        module.quantize_base = False
        dtype = _adapter_dtype(embedding.weight)
        vocab, hidden = embedding.weight.shape
        module.lora_embedding_A = nn.Parameter(torch.empty(spec.rank, vocab, device="meta", dtype=dtype))
        module.lora_embedding_B = nn.Parameter(torch.empty(hidden, spec.rank, device="meta", dtype=dtype))
        return module

    def _embed(self, x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return F.embedding(x, table, self.padding_idx, self.max_norm, self.norm_type,
                           self.scale_grad_by_freq, self.sparse)

    def lora_forward(self, x: torch.Tensor) -> torch.Tensor:
        """`s · (Aᵀ[x]) Bᵀ`, shape (..., hidden)."""
        return (self._embed(x, self.lora_embedding_A.T) @ self.lora_embedding_B.T) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return (out + self.lora_forward(x)).to(out.dtype)  # rounded once, as in LoRALinear

    def delta_weight(self) -> torch.Tensor:
        """`s · (B A)ᵀ` in fp32, shape (vocab, hidden)."""
        return self.scaling * (self.lora_embedding_B.float() @ self.lora_embedding_A.float()).T

    def merged_weight(self) -> torch.Tensor:
        """The plain embedding table equal to base plus adapter, computed in fp32, in the base dtype."""
        return (self.weight.float() + self.delta_weight()).to(self.weight.dtype)

    def reset_adapter_parameters(self, device: torch.device | str, dtype: torch.dtype) -> None:
        """PEFT's embedding init, drawn on the CPU generator: A zeros, B ~ N(0, 1)."""
        b = torch.empty(self.lora_embedding_B.shape)
        nn.init.normal_(b)
        self.lora_embedding_A = _parameter(torch.zeros(self.lora_embedding_A.shape), device, dtype)
        self.lora_embedding_B = _parameter(b, device, dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.spec.rank}, alpha={self.spec.alpha}, scaling={self.scaling:g}"


def _parameter(values: torch.Tensor, device, dtype) -> nn.Parameter:
    # Drawn on the CPU so that a seed gives the same adapters on every device.
    return nn.Parameter(values.to(device=device, dtype=dtype))
