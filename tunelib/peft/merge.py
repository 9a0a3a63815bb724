"""Fold adapters into plain weights, for a Hugging Face model folder that needs no PEFT."""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from tunelib.peft.params import is_adapter_key, lora_modules
from tunelib.quantization import nf4


def merged_state_dict(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """Return `(state_dict, config_updates)`: the model's weights with every adapter merged in.

    Each adapted weight becomes `W + s·BA` (DoRA: rescaled per row to its magnitude), computed
    in fp32 and cast back to the base dtype; NF4 weights are dequantised; adapter keys are
    dropped. Other tensors are the model's own (not copies), so write them out before training
    on. Of weights tied together, only the first name is kept, as Hugging Face saves them,
    unless an adapter on one of them made them differ: then every name is written and
    `config_updates` is `{"tie_word_embeddings": False}`, which the caller must write into
    config.json (otherwise transformers would tie lm_head to the merged embedding again).

    A LLaMA-Adapter v2 model is folded by `fold_llama_adapter_v2` (its prompts cannot be);
    for v1 this raises ValueError, since prompts are all it has.
    """
    from tunelib.peft.llama_adapter import llama_adapter_spec  # see tunelib/peft/__init__.py on import order
    from tunelib.peft.llama_adapter_fold import fold_llama_adapter_v2

    if llama_adapter_spec(model) is not None:
        return fold_llama_adapter_v2(model)
    merged = {f"{name}.weight": module.merged_weight() for name, module in lora_modules(model).items()}
    weights = {
        key: merged[key] if key in merged else nf4.dequantize(value)
        for key, value in model.state_dict().items()
        if not is_adapter_key(key)
    }
    config_updates: dict[str, object] = {}
    for names in _tied_groups(model):
        if any(name in merged for name in names):
            config_updates["tie_word_embeddings"] = False
        else:
            for alias in names[1:]:
                weights.pop(alias, None)
    return weights, config_updates


def _tied_groups(model: nn.Module) -> list[list[str]]:
    """Names that share one tensor, for each tensor that has more than one name."""
    groups: dict[object, list[str]] = defaultdict(list)
    for name, param in model.named_parameters(remove_duplicate=False):
        groups[_identity(param)].append(name)
    return [names for names in groups.values() if len(names) > 1]


def _identity(t: torch.Tensor) -> object:
    # Tied weights may be one Parameter under two names, or two Parameters over one storage
    # (as a loader that assigns each name may leave them); both are the same weight.
    if t.is_meta or nf4.is_nf4(t):
        return id(t)
    return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
