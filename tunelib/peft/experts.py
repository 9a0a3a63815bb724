"""LoRA on mixture-of-experts projections, and their per-expert names in PEFT folders.

`LoRAGroupedLinear` is a `GroupedLinear` (one weight per expert, stacked: (E, out, in)) with
one LoRA per expert, stacked the same way: `lora_A.weight (E, r, in)`, `lora_B.weight
(E, out, r)`. Expert e computes `W_e x + s · B_e A_e dropout(x)` on its rows, as E separate
LoRALinear would. The router (`mlp.gate`) is never a target.

A PEFT folder stores one LoRA per expert under the checkpoint's per-expert module names
(`base_model.model.model.layers.0.mlp.experts.3.gate_proj.lora_A.weight`, Mixtral's
`...block_sparse_moe.experts.3.w1...`), the form transformers 4 models had and PEFT 0.21
converts onto transformers 5's fused experts when it loads the adapter. `unstack` and
`stack` translate between the two.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from tunelib.models.config import DecoderConfig
from tunelib.models.moe import ExpertKeys, GroupedLinear, Groups, grouped_mm
from tunelib.models.registry import format_for
from tunelib.quantization import nf4


class LoRAGroupedLinear(GroupedLinear):
    """`GroupedLinear` plus a low-rank update per expert; weight shared with the module it wraps.

    With `quantize_base` the stacked weight is a frozen NF4 tensor (QLoRA), dequantized one
    projection at a time in the forward and again in the backward (never kept for it).
    """

    @classmethod
    def from_grouped(cls, linear: GroupedLinear, spec, *, quantize_base: bool = False) -> LoRAGroupedLinear:
        """Wrap `linear`'s own weight (shared, not copied) with meta adapters of `spec` (a LoraSpec)."""
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        E, I, O = linear.num_experts, linear.in_features, linear.out_features
        module.num_experts, module.in_features, module.out_features = E, I, O
        module.weight = linear.weight
        module.spec, module.scaling = spec, spec.scaling
        module.quantize_base = quantize_base or getattr(linear, "quantize_base", False)
        dtype = module.weight.dtype if module.weight.dtype.is_floating_point else torch.float32
        with torch.device("meta"):
            module.lora_A = GroupedLinear(E, I, spec.rank).to(dtype)
            module.lora_B = GroupedLinear(E, spec.rank, O).to(dtype)
        module.lora_dropout = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        return module

    def base_forward(self, x: torch.Tensor, groups: Groups) -> torch.Tensor:
        """Every expert's `W_e x` without the adapter (W may be NF4)."""
        return grouped_nf4_mm(x, self.weight, groups) if self.quantize_base else grouped_mm(x, self.weight, groups)

    def forward(self, x: torch.Tensor, groups: Groups) -> torch.Tensor:
        out = self.base_forward(x, groups)
        # Adapters in their own dtype (fp32 on a bf16 base by default), the sum rounded once.
        a = self.lora_A(self.lora_dropout(x.to(self.lora_A.weight.dtype)), groups) * self.scaling  # (R, r)
        return (out + self.lora_B(a, groups)).to(out.dtype)

    def delta_weight(self) -> torch.Tensor:
        """`s · B_e A_e` of every expert in fp32, shape (E, out, in)."""
        return self.scaling * (self.lora_B.weight.float() @ self.lora_A.weight.float())

    def merged_weight(self) -> torch.Tensor:
        """The plain stacked weight equal to base plus adapters, computed in fp32, in the base dtype."""
        base = nf4_dequantize(self.weight, self.num_experts)
        return (base.float() + self.delta_weight()).to(base.dtype)

    def reset_adapter_parameters(self, device: torch.device | str, dtype: torch.dtype) -> None:
        """PEFT's init for each expert, drawn on the CPU generator: A kaiming-uniform (a=√5), B zeros."""
        a = torch.empty(self.lora_A.weight.shape)
        for expert in a:  # fan-in of one expert's A, as PEFT gives each expert's nn.Linear
            nn.init.kaiming_uniform_(expert, a=math.sqrt(5))
        self.lora_A.weight = nn.Parameter(a.to(device=device, dtype=dtype))
        self.lora_B.weight = nn.Parameter(torch.zeros(self.lora_B.weight.shape, device=device, dtype=dtype))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.spec.rank}, alpha={self.spec.alpha}, scaling={self.scaling:g}"


# ---------------------------------------------------------------- NF4 experts


def nf4_dequantize(weight: torch.Tensor, num_experts: int) -> torch.Tensor:
    """The stacked (E, out, in) weight of a plain or NF4 parameter (an NF4 one, and its meta
    placeholder before loading, are kept flat: (E·out, in))."""
    full = nf4.dequantize(weight)
    return full.view(num_experts, -1, full.shape[-1]) if full.dim() == 2 else full


class _GroupedNF4(torch.autograd.Function):
    """grouped_mm by a frozen NF4 weight, dequantized again in the backward instead of saved."""

    @staticmethod
    def forward(ctx, x, weight, groups):
        ctx.weight, ctx.groups = weight, groups
        full = nf4_dequantize(weight, groups.counts.shape[0]).to(x.dtype)
        return grouped_mm(x, full, groups)

    @staticmethod
    def backward(ctx, grad):
        full = nf4_dequantize(ctx.weight, ctx.groups.counts.shape[0]).to(grad.dtype)
        return grouped_mm(grad, full.transpose(-2, -1), ctx.groups), None, None


def grouped_nf4_mm(x: torch.Tensor, weight: torch.Tensor, groups: Groups) -> torch.Tensor:
    """`grouped_mm` that also takes an NF4 weight, which then gets no gradient."""
    if not nf4.is_nf4(weight):
        return grouped_mm(x, nf4_dequantize(weight, groups.counts.shape[0]), groups)
    return _GroupedNF4.apply(x, weight, groups)


def flatten_for_nf4(module: GroupedLinear) -> None:
    """Give a meta-device expert weight the (E·out, in) shape its NF4 tensor will have, so that
    FSDP2, which shards the model before the weights are read, shards that shape."""
    weight = module.weight
    if weight.is_meta and weight.dim() == 3:
        module.weight = nn.Parameter(torch.empty(weight.shape[0] * weight.shape[1], weight.shape[2], device="meta",
                                                 dtype=weight.dtype), requires_grad=False)


class NF4GroupedLinear(GroupedLinear):
    """A frozen GroupedLinear whose stacked weight becomes NF4 once real values arrive (QLoRA's
    experts that have no adapter). Keeps the `weight` name, so checkpoints load unchanged."""

    quantize_base = True

    @classmethod
    def from_grouped(cls, linear: GroupedLinear) -> NF4GroupedLinear:
        """Turn `linear` into an NF4GroupedLinear sharing its weight (quantized later, on load)."""
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.num_experts, module.in_features, module.out_features = (linear.num_experts, linear.in_features,
                                                                       linear.out_features)
        module.weight = linear.weight
        return module

    def forward(self, x: torch.Tensor, groups: Groups) -> torch.Tensor:
        return grouped_nf4_mm(x, self.weight, groups)


# ---------------------------------------------------------------- PEFT names


def expert_keys(model: nn.Module) -> ExpertKeys | None:
    """How the checkpoint format of `model` names each expert, or None for a model without experts."""
    config = getattr(model, "config", None)  # a transformers model (as some tests adapt) has its own kind
    if not isinstance(config, DecoderConfig) or config.num_experts is None:
        return None
    return format_for(config).expert_keys


_STACKED_ADAPTER = re.compile(r"^(.*\.)mlp\.experts\.(gate_proj|up_proj|down_proj)\.(lora_[AB]\.weight)$")
_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


def unstack(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Adapter tensors by our names -> by the checkpoint's per-expert names (one LoRA per expert).

    `...mlp.experts.gate_proj.lora_A.weight (E, r, in)` becomes E tensors
    `...<block>.experts.e.<gate name>.lora_A.weight (r, in)`; other names are unchanged.
    """
    keys = expert_keys(model)
    if keys is None:
        return tensors
    out = {}
    for name, tensor in tensors.items():
        match = _STACKED_ADAPTER.match(name)
        if match is None:
            out[name] = tensor
            continue
        theirs = keys.names[_PROJECTIONS.index(match[2])]
        for e, piece in enumerate(tensor.unbind(0)):
            out[f"{match[1]}{keys.block}.experts.{e}.{theirs}.{match[3]}"] = piece
    return out


def stack(model: nn.Module, tensors: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """The inverse of `unstack` (keys may start with `prefix`): per-expert adapter tensors stacked
    into ours. An expert missing from the file leaves the stacked name out (reported by the caller)."""
    keys = expert_keys(model)
    if keys is None:
        return tensors
    names = "|".join(map(re.escape, keys.names))
    pattern = re.compile(rf"^{re.escape(prefix)}(.*\.){re.escape(keys.block)}\.experts\.(\d+)\.({names})\."
                         r"(lora_[AB]\.weight)$")
    out, pieces = {}, {}
    for key, tensor in tensors.items():
        match = pattern.match(key)
        if match is None:
            out[key] = tensor
            continue
        ours = f"{prefix}{match[1]}mlp.experts.{_PROJECTIONS[keys.names.index(match[3])]}.{match[4]}"
        pieces.setdefault(ours, {})[int(match[2])] = tensor
    for ours, by_expert in pieces.items():
        if sorted(by_expert) == list(range(model.config.num_experts)):
            out[ours] = torch.stack([by_expert[e] for e in range(len(by_expert))])
    return out


def peft_name(model: nn.Module, name: str) -> str:
    """The name PEFT matches targets against for our module `name`: for stacked experts, expert
    0's module in the checkpoint (`...mlp.experts.gate_proj` -> `...block_sparse_moe.experts.0.w1`)."""
    keys = expert_keys(model)
    match = re.match(r"^(.*\.)mlp\.experts\.(gate_proj|up_proj|down_proj)$", name)
    if keys is None or match is None:
        return name
    return f"{match[1]}{keys.block}.experts.0.{keys.names[_PROJECTIONS.index(match[2])]}"
