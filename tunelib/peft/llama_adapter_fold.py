"""Fold LLaMA-Adapter v2's per-output scales and biases into plain linear weights.

A v2 linear computes `s ⊙ (W x + b + bias)`, which is the plain linear `W' = diag(s) W`,
`b' = s ⊙ (b + bias)`: that part folds exactly. The prompts and their gates do not: they are
attention over extra keys that no plain weight can express, so a folded folder leaves them out
(v1, which is only prompts, cannot be folded at all). A bias folds only where the model's
Hugging Face architecture has a place for one: Llama's `attention_bias`/`mlp_bias` switches
give q/k/v/o and the MLP one, Qwen2 has q/k/v biases only, and no causal LM has an lm_head
bias. `fold_leaves_out` names what a fold of a given model drops.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from tunelib.checkpoint.pending import PendingWeight
from tunelib.models.config import DecoderConfig
from tunelib.models.registry import format_for
from tunelib.peft.llama_adapter import AdapterV2Linear, PromptedAttention, llama_adapter_spec
from tunelib.peft.params import is_adapter_key
from tunelib.quantization import nf4

# Which DecoderConfig switch gives a linear (by its Hugging Face leaf name) a bias.
_BIAS_FLAG = {"q_proj": "qkv_bias", "k_proj": "qkv_bias", "v_proj": "qkv_bias", "o_proj": "o_bias",
              "gate_proj": "mlp_bias", "up_proj": "mlp_bias", "down_proj": "mlp_bias"}


def folded_weights(model: nn.Module) -> tuple[dict[str, PendingWeight], dict[str, object]]:
    """Return `(weights, config_updates)` of a plain Hugging Face model with v2's linears folded.

    Every v2 linear becomes `diag(s) W` (computed in fp32, cast to the base dtype; NF4 is
    dequantised) with bias `s ⊙ (b + bias)` where the architecture can hold a bias;
    `config_updates` turns on the bias switches needed (e.g. `{"attention_bias": True}`) and
    unties a tied lm_head, whose scale makes it differ from the embedding. Trained norm
    weights are the model's own, in the base's dtype (also when trained in fp32); prompts,
    gates and biases without a place are left out. Values are computed from the parameters as
    they are when asked (see `merged_weights`).

    Raises:
        ValueError: the model has no LLaMA-Adapter v2.
    """
    spec = llama_adapter_spec(model)
    if spec is None or spec.version != "v2":
        raise ValueError("only LLaMA-Adapter v2 folds into plain weights; v1 is prompts only, which cannot")
    slots = bias_slots(model.config)
    # Trained norms may be kept in fp32 (adapter_dtype); the folder holds the base's dtype.
    base_dtype = model.model.embed_tokens.weight.dtype
    weights = {}
    for key, value in model.state_dict(keep_vars=True).items():
        if not is_adapter_key(key):
            module_name, _, attr = key.rpartition(".")
            module = model.get_submodule(module_name) if module_name else model
            dtype = base_dtype if value.is_floating_point() else value.dtype
            weights[key] = PendingWeight(tuple(value.shape), dtype,
                                         lambda m=module, a=attr, d=dtype: nf4.dequantize(getattr(m, a)).to(d))
    for name, module in _v2_linears(model).items():
        shape, dtype = tuple(module.weight.shape), module.weight.dtype
        weights[f"{name}.weight"] = PendingWeight(shape, dtype, lambda m=module: m.folded()[0])
        if _holds_bias(name, slots):
            weights[f"{name}.bias"] = PendingWeight((shape[0],), dtype, lambda m=module: m.folded()[1])
    updates = _config_updates(model.config, slots)
    if model.config.tie_word_embeddings:
        updates["tie_word_embeddings"] = False
    return weights, updates


def fold_llama_adapter_v2(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """`folded_weights` with every value computed: `(state_dict, config_updates)`."""
    weights, updates = folded_weights(model)
    return {key: pending.make() for key, pending in weights.items()}, updates


def fold_leaves_out(model: nn.Module) -> list[str]:
    """What `fold_llama_adapter_v2` cannot put into plain weights for this model, in words ([] if nothing)."""
    prompted = [i for i, layer in enumerate(model.model.layers) if isinstance(layer.self_attn, PromptedAttention)]
    out = []
    if prompted:
        where = f"layer {prompted[0]}" if len(prompted) == 1 else f"layers {prompted[0]}-{prompted[-1]}"
        out.append(f"the prompts and gates of {where}")
    slots = bias_slots(model.config)
    homeless = sorted({name.rsplit(".", 1)[-1] for name in _v2_linears(model) if not _holds_bias(name, slots)})
    if homeless:
        out.append(f"the biases of {', '.join(homeless)} ({model.config.architecture} has no place for them)")
    return out


def bias_slots(config: DecoderConfig) -> DecoderConfig:
    """`config` with every bias switch its Hugging Face format can express turned on.

    Found by writing a config with all biases through the family's format and reading it
    back, so no family is named here.
    """
    fmt = format_for(config)
    wanted = dataclasses.replace(config, qkv_bias=True, o_bias=True, mlp_bias=True)
    got = fmt.read(fmt.write(wanted))
    return dataclasses.replace(config, qkv_bias=got.qkv_bias, o_bias=got.o_bias, mlp_bias=got.mlp_bias)


def _config_updates(config: DecoderConfig, slots: DecoderConfig) -> dict[str, object]:

    fmt = format_for(config)
    before, after = fmt.write(config), fmt.write(slots)
    return {key: value for key, value in after.items() if before.get(key) != value}


def _holds_bias(name: str, slots: DecoderConfig) -> bool:
    flag = _BIAS_FLAG.get(name.rsplit(".", 1)[-1])
    return flag is not None and getattr(slots, flag)


def _v2_linears(model: nn.Module) -> dict[str, AdapterV2Linear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, AdapterV2Linear)}
