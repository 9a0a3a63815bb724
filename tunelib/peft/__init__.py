"""Parameter-efficient fine-tuning as model transformations, written once for all families.

`apply_peft` swaps modules of a (meta-device) model by their Hugging Face names; the model
code itself knows nothing about adapters. A recipe then does, in this order:

    model = apply_peft(builder(**model_settings))           # on meta; or apply_peft(model, lora_rank=8, ...)
    load_hf_weights(model, folder, dtype=..., device=...,
                    transform=nf4_transform(model),        # NF4 for QLoRA, else None
                    ignore_missing=is_adapter_key)
    initialize_adapters(model, device, adapter_dtype)       # A, B, then DoRA magnitudes
    store_trained_in(model, adapter_dtype)                  # LLaMA-Adapter v2's norms too
    set_trainable(model)                                    # only adapters train
    ...train...
    save_peft_adapter(model, out / "adapter", base_model_name_or_path=...)
    weights, config_updates = merged_state_dict(model)      # plain HF weights

Parameter names stay Hugging Face's, so a PEFT adapter key is `base_model.model.` + ours.
LLaMA-Adapter v1/v2 (`apply_peft(model, adapter="v1")`) follows the same order but saves with
`save_llama_adapter` (PEFT has no format for it) and, for v2, folds with `fold_llama_adapter_v2`.
"""

from __future__ import annotations

from tunelib.errors import ConfigError
from tunelib.models.adapter_options import AdapterOptions
from tunelib.peft import targets
from tunelib.peft.dora import DoRAEmbedding, DoRALinear
from tunelib.peft.fused import (
    PHI3_FUSED_PROJECTIONS,
    LoraWeights,
    fuse_adapter_state_dict,
    fuse_lora,
    split_adapter_state_dict,
    split_fused_lora,
)
from tunelib.peft.llama_adapter import (
    AdapterV2Linear,
    LlamaAdapterSpec,
    PromptedAttention,
    add_llama_adapter,
    checked_spec,
    llama_adapter_spec,
)
from tunelib.peft.llama_adapter_fold import fold_leaves_out, fold_llama_adapter_v2
from tunelib.peft.llama_adapter_folder import load_llama_adapter, save_llama_adapter
from tunelib.peft.lora import LoRAEmbedding, LoRALinear, LoraSpec
from tunelib.peft.merge import merged_state_dict, merged_weights
from tunelib.peft.params import (
    adapter_params,
    adapter_state_dict,
    initialize_adapters,
    is_adapter_key,
    lora_modules,
    set_trainable,
    store_trained_in,
)
from tunelib.peft.peft_folder import adapter_config, load_peft_adapter, save_peft_adapter
from tunelib.peft.swap import add_adapters
from tunelib.peft.switch import adapters_disabled
from tunelib.quantization import nf4_transform


def apply_peft(model, options: AdapterOptions | None = None, **keywords):
    """Add the adapters of a model config to `model` in place and return it.

    Takes `options` (an AdapterOptions), or its fields as keywords, or neither: then the
    options a model builder recorded on the model (`model.adapter_options`, from the config's
    `model` node). See `tunelib.models.AdapterOptions` for what each option does. With no
    target, no adapter and no DoRA/QLoRA the model is returned unchanged (full fine-tuning).
    Afterwards `model.adapter_options` is None: nothing is left to apply.

    Raises:
        TypeError: an unknown keyword, or both `options` and keywords.
        ConfigError: an unknown module name, a bad value, DoRA or QLoRA without any target,
            LoRA and LLaMA-Adapter together, or a weight NF4 cannot hold (its name and shape
            are in the message).
    """
    if options is not None and keywords:
        raise TypeError("apply_peft takes options or keywords, not both")
    if options is None:
        options = AdapterOptions(**keywords) if keywords else getattr(model, "adapter_options", None)
    model.adapter_options = None
    return model if options is None else _apply(model, **options.as_kwargs())


def _apply(model, *, lora_attn_modules, apply_lora_to_mlp, apply_lora_to_output, apply_lora_to_embeddings,
           lora_rank, lora_alpha, lora_dropout, use_rslora, use_dora, quantize_base, adapter,
           adapter_prompt_length, adapter_start_layer):
    leaves = targets.leaf_targets(lora_attn_modules, apply_lora_to_mlp, apply_lora_to_output,
                                  apply_lora_to_embeddings)
    if adapter is not None:
        return _apply_llama_adapter(model, leaves, use_dora, quantize_base,
                                    checked_spec(adapter, adapter_prompt_length, adapter_start_layer))
    if not leaves:
        for flag, on in (("use_dora", use_dora), ("quantize_base", quantize_base)):
            if on:
                raise ConfigError(
                    f"{flag}=True needs LoRA targets: set lora_attn_modules, apply_lora_to_mlp, "
                    "apply_lora_to_output or apply_lora_to_embeddings"
                )
        return model
    spec = _spec(lora_rank, lora_alpha, lora_dropout, use_rslora, use_dora)
    names = targets.modules_named(model, leaves)
    add_adapters(model, {name: spec for name in names}, quantize_base=quantize_base)
    return model


def _apply_llama_adapter(model, lora_targets: list[str], use_dora: bool, quantize_base: bool,
                         spec: LlamaAdapterSpec):
    if lora_targets or use_dora:
        raise ConfigError(f"adapter={spec.version} (LLaMA-Adapter) cannot be combined with LoRA/DoRA; remove "
                          "lora_attn_modules, apply_lora_to_* and use_dora, or set adapter to null")
    if quantize_base:
        add_adapters(model, {}, quantize_base=True)  # decoder linears become frozen NF4, as under QLoRA
    add_llama_adapter(model, spec)
    return model


def _spec(rank, alpha, dropout, use_rslora, use_dora) -> LoraSpec:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"lora_rank must be a positive integer, got {rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise ConfigError(f"lora_alpha must be a positive number, got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"lora_dropout must be a number in [0, 1), got {dropout!r}")
    return LoraSpec(rank, float(alpha), float(dropout), bool(use_rslora), bool(use_dora))


__all__ = [
    "PHI3_FUSED_PROJECTIONS",
    "AdapterV2Linear",
    "LlamaAdapterSpec",
    "PromptedAttention",
    "adapters_disabled",
    "add_llama_adapter",
    "fold_leaves_out",
    "fold_llama_adapter_v2",
    "llama_adapter_spec",
    "load_llama_adapter",
    "save_llama_adapter",
    "LoraWeights",
    "DoRAEmbedding",
    "DoRALinear",
    "LoRAEmbedding",
    "LoRALinear",
    "LoraSpec",
    "adapter_config",
    "adapter_params",
    "adapter_state_dict",
    "add_adapters",
    "apply_peft",
    "fuse_adapter_state_dict",
    "fuse_lora",
    "initialize_adapters",
    "is_adapter_key",
    "load_peft_adapter",
    "lora_modules",
    "merged_state_dict",
    "merged_weights",
    "nf4_transform",
    "save_peft_adapter",
    "set_trainable",
    "store_trained_in",
    "split_adapter_state_dict",
    "split_fused_lora",
]
