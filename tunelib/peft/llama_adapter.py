"""LLaMA-Adapter v1 and v2 as module swaps on any tunelib decoder, with Hugging Face names kept.

v1 (Zhang et al. 2023, arXiv 2303.16199), in every layer from `start_layer` on: a learned
prompt P (prompt_length, hidden) goes through the layer's own k_proj and v_proj (no RoPE, no
norm), the layer's rotated queries attend to it with a softmax of their own (no causal mask),
and the result is added per head through a gate g that starts at zero:

    out_h = softmax(q K_tokᵀ s + causal) V_tok + g_h · softmax(q (W_k P)ᵀ s) (W_v P)

so the model at step 0 is exactly the base model. v2 (Gao et al. 2023, arXiv 2304.15010)
adds, on every linear layer but the embedding, `y = scale ⊙ (W x + b + bias)` with scale = 1
and bias = 0 at first, and trains every norm weight; base weights stay frozen. The math is
LitGPT's (`litgpt/adapter.py`, `adapter_v2.py`) except that the prompt's keys and values come
from the real key and value projections (LitGPT slices its fused projection by an outdated
layout).

New parameter names (none is in a base checkpoint, see `is_adapter_key`):
`model.layers.N.self_attn.adapter_prompt (prompt_length, hidden)`,
`model.layers.N.self_attn.adapter_gate (num_attention_heads,)`, and for v2
`<linear>.adapter_scale (out,)` and `<linear>.adapter_bias (out,)`. Base weights keep their
names (`...q_proj.weight`), so checkpoints load unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from tunelib.errors import ConfigError
from tunelib.models.attention import Attention
from tunelib.models.norm import RMSNorm
from tunelib.quantization import nf4

Version = Literal["v1", "v2"]


@dataclass(frozen=True)
class LlamaAdapterSpec:
    """The settings of a LLaMA-Adapter (the builder keywords `adapter`, `adapter_prompt_length`,
    `adapter_start_layer`)."""

    version: Version
    prompt_length: int = 10
    start_layer: int = 2

    def prompted(self, num_layers: int) -> range:
        """The indices of the layers that get a prompt."""
        return range(min(self.start_layer, num_layers), num_layers)


def checked_spec(version, prompt_length, start_layer) -> LlamaAdapterSpec:
    """A spec from builder keywords, or ConfigError naming the bad one."""
    if version not in ("v1", "v2"):
        raise ConfigError(f"adapter must be 'v1', 'v2' or null, got {version!r}")
    for key, value in (("adapter_prompt_length", prompt_length), ("adapter_start_layer", start_layer)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key == "adapter_prompt_length" else 0):
            low = "a positive integer" if key == "adapter_prompt_length" else "an integer >= 0"
            raise ConfigError(f"{key} must be {low}, got {value!r}")
    return LlamaAdapterSpec(version, prompt_length, start_layer)


def _param_dtype(weight: torch.Tensor) -> torch.dtype:
    # An NF4 weight reports the dtype it was quantized from, which is the training dtype.
    return weight.dtype if weight.dtype.is_floating_point else torch.float32


def _meta(*shape: int, dtype: torch.dtype) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape, device="meta", dtype=dtype))


class PromptedAttention(Attention):
    """An `Attention` that also attends, through a per-head gate, to a learned prompt (LLaMA-Adapter).

    Parameters on top of the attention's own: `adapter_prompt (prompt_length, hidden)` and
    `adapter_gate (num_attention_heads,)`. Only `attend` differs from the base class, so
    masks, caches, sliding windows and soft-capping behave as in the plain model.
    """

    spec: LlamaAdapterSpec

    @classmethod
    def from_attention(cls, attention: Attention, spec: LlamaAdapterSpec) -> PromptedAttention:
        """The same attention (its projections and settings shared, not copied) with meta prompt and gate."""
        module = cls.__new__(cls)
        module.__dict__.update(attention.__dict__)
        # Fresh registries, so adding the prompt does not also add it to the module replaced.
        module._parameters, module._buffers, module._modules = (
            dict(attention._parameters), dict(attention._buffers), dict(attention._modules))
        module.spec = spec
        dtype = _param_dtype(attention.q_proj.weight)
        heads = attention.q_proj.out_features // attention.head_dim
        module.adapter_prompt = _meta(spec.prompt_length, attention.q_proj.in_features, dtype=dtype)
        module.adapter_gate = _meta(heads, dtype=dtype)
        return module

    def prompt_keys_values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompt through this layer's k_proj and v_proj: two (1, KV, prompt_length, D) tensors.

        No RoPE (the prompt has no position) and no q/k norm, as in the paper and LitGPT. In v2
        the projections carry their own scale and bias, which then apply to the prompt too.
        """
        # Stored in the adapters' dtype (fp32 by default), computed in the projections' (bf16),
        # like FSDP2's mixed precision: fp32 keeps small updates, the activations stay bf16.
        prompt = self.adapter_prompt.to(_param_dtype(self.k_proj.weight))  # (L, hidden)
        length = prompt.shape[0]
        k = self.k_proj(prompt).view(1, length, -1, self.head_dim).transpose(1, 2)  # (1, KV, L, D)
        v = self.v_proj(prompt).view(1, length, -1, self.head_dim).transpose(1, 2)  # (1, KV, L, D)
        return k, v

    def attend(self, q, k, v, mask, *, causal: bool = True) -> torch.Tensor:
        """The base attention plus `gate_h ·` attention of the same queries over the prompt alone."""
        out = super().attend(q, k, v, mask, causal=causal)  # (B, H, T, D)
        prompt_k, prompt_v = self.prompt_keys_values()
        batch = q.shape[0]
        # Its own softmax, over the prompt only; every token sees all of it (no mask).
        prompted = super().attend(q, prompt_k.expand(batch, -1, -1, -1), prompt_v.expand(batch, -1, -1, -1),
                                  None, causal=False)  # (B, H, T, D)
        return out + self.adapter_gate.view(1, -1, 1, 1).to(out.dtype) * prompted

    def reset_adapter_parameters(self, device, dtype) -> None:
        """LitGPT's init, drawn on the CPU generator: prompt ~ N(0, 1) (nn.Embedding's), gate 0."""
        prompt = torch.empty(self.adapter_prompt.shape)
        nn.init.normal_(prompt)
        self.adapter_prompt = nn.Parameter(prompt.to(device=device, dtype=dtype))
        self.adapter_gate = nn.Parameter(torch.zeros(self.adapter_gate.shape, device=device, dtype=dtype))

    def extra_repr(self) -> str:
        return f"prompt_length={self.spec.prompt_length}, gated per head"


class AdapterV2Linear(nn.Linear):
    """`nn.Linear` with LLaMA-Adapter v2's per-output scale and bias: `scale ⊙ (W x + b + bias)`.

    Parameters: `weight (out, in)` and `bias (out,)` or None, frozen (the weight may be NF4);
    `adapter_scale (out,)` starting at 1 and `adapter_bias (out,)` starting at 0.
    """

    spec: LlamaAdapterSpec

    @classmethod
    def from_linear(cls, linear: nn.Linear, spec: LlamaAdapterSpec) -> AdapterV2Linear:
        """Wrap `linear`'s own weight and bias tensors (shared, not copied) with meta scale and bias."""
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.in_features, module.out_features = linear.in_features, linear.out_features
        module.weight, module.bias = linear.weight, linear.bias
        module.spec = spec
        module.quantize_base = getattr(linear, "quantize_base", False)  # NF4Linear: nf4_transform quantizes it
        dtype = _param_dtype(linear.weight)
        module.adapter_scale = _meta(linear.out_features, dtype=dtype)
        module.adapter_bias = _meta(linear.out_features, dtype=dtype)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = nf4.linear(x, self.weight, self.bias)  # (..., out)
        # Cast at use, as the prompt is: a scale stored in bf16 could not move from 1 by less
        # than 2^-8, so updates of a usual learning rate would round away.
        return (out + self.adapter_bias.to(out.dtype)) * self.adapter_scale.to(out.dtype)

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of the plain linear computing the same: `diag(s) W` and `s ⊙ (b + bias)`.

        Computed in fp32 and returned in the base weight's dtype (NF4 is dequantised).
        """
        weight = nf4.dequantize(self.weight)
        scale = self.adapter_scale.detach().float()
        bias = self.adapter_bias.detach().float() + (0 if self.bias is None else self.bias.detach().float())
        return (scale[:, None] * weight.detach().float()).to(weight.dtype), (scale * bias).to(weight.dtype)

    def reset_adapter_parameters(self, device, dtype) -> None:
        """Scale 1 and bias 0: the wrapped linear is unchanged."""
        self.adapter_scale = nn.Parameter(torch.ones(self.out_features, device=device, dtype=dtype))
        self.adapter_bias = nn.Parameter(torch.zeros(self.out_features, device=device, dtype=dtype))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, adapter scale and bias"


ADAPTER_MODULES = (PromptedAttention, AdapterV2Linear)


def add_llama_adapter(model: nn.Module, spec: LlamaAdapterSpec) -> None:
    """Apply LLaMA-Adapter `spec` to a tunelib CausalLM in place (meta or loaded; NF4 linears too).

    Prompts go into the attention of layers `spec.start_layer` onwards; v2 also wraps every
    `nn.Linear` (lm_head included, the embedding not). With real base weights the new
    parameters get their first values at once; on meta they wait for `initialize_adapters`.

    Raises:
        ConfigError: the model already has an adapter, is not a tunelib decoder, or (v1) no
            layer is at or after `start_layer`.
    """
    _check_adaptable(model, spec)
    layers = model.model.layers
    for index in spec.prompted(len(layers)):
        layers[index].self_attn = PromptedAttention.from_attention(layers[index].self_attn, spec)
    if spec.version == "v2":
        linears = [name for name, module in model.named_modules() if type(module) in (nn.Linear, nf4.NF4Linear)]
        for name in linears:
            parent, _, leaf = name.rpartition(".")
            owner = model.get_submodule(parent) if parent else model
            setattr(owner, leaf, AdapterV2Linear.from_linear(getattr(owner, leaf), spec))
    if not model.lm_head.weight.is_meta:
        initialize_llama_adapter(model)


def _check_adaptable(model: nn.Module, spec: LlamaAdapterSpec) -> None:
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or not all(isinstance(layer.self_attn, Attention) for layer in layers):
        raise ConfigError(f"LLaMA-Adapter needs a tunelib decoder (tunelib.models); got a {type(model).__name__}")
    if any(isinstance(m, ADAPTER_MODULES) for m in model.modules()):
        raise ConfigError("this model already has a LLaMA-Adapter; apply adapters once")
    if spec.version == "v1" and not spec.prompted(len(layers)):
        raise ConfigError(f"adapter_start_layer={spec.start_layer} but the model has {len(layers)} layers, so v1 "
                          f"would train nothing; use a start layer below {len(layers)}")


def llama_adapter_spec(model: nn.Module) -> LlamaAdapterSpec | None:
    """The spec of `model`'s LLaMA-Adapter, or None if it has none."""
    for module in model.modules():
        if isinstance(module, ADAPTER_MODULES):
            return module.spec
    return None


def tuned_norm_weights(model: nn.Module) -> list[str]:
    """The norm weights v2 trains (every RMSNorm's, as the paper unfreezes normalisation); [] otherwise.

    LitGPT matches only `norm_1`, `norm_2` and `ln_f` by name, which leaves Gemma 2's extra
    norms and Qwen 3's q/k norms frozen; here every norm trains. For Llama both are the same.
    """
    if not any(isinstance(m, AdapterV2Linear) for m in model.modules()):
        return []
    return [f"{name}.weight" for name, module in model.named_modules() if isinstance(module, RMSNorm)]


def initialize_llama_adapter(model: nn.Module, device=None, dtype: torch.dtype | None = None) -> None:
    """Give values to every LLaMA-Adapter parameter still on meta, in model order (see each `reset_adapter_parameters`).

    They land on `device` in `dtype` (default: the base weight's device and the adapter's dtype).
    """
    for module in model.modules():
        if isinstance(module, PromptedAttention) and module.adapter_prompt.is_meta:
            base = module.q_proj.weight
            module.reset_adapter_parameters(*_placement(base, module.adapter_prompt, device, dtype))
        elif isinstance(module, AdapterV2Linear) and module.adapter_scale.is_meta:
            module.reset_adapter_parameters(*_placement(module.weight, module.adapter_scale, device, dtype))


def _placement(base: torch.Tensor, adapter: torch.Tensor, device, dtype):
    if device is None:
        device = torch.device("cpu") if base.is_meta else base.device
    return device, dtype or adapter.dtype
