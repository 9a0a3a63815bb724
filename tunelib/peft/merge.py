"""Fold adapters into plain weights, for a Hugging Face model folder that needs no PEFT.

Each weight of the folder is given as a `PendingWeight`: its shape and dtype at once, its
values only when asked. A writer asks for them one at a time, as it writes them, so a merge
never holds a second copy of the model; `merged_state_dict` asks for all of them at once,
for callers that want a plain dict.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from tunelib.checkpoint.pending import PendingWeight
from tunelib.peft.llama_adapter import llama_adapter_spec
from tunelib.peft.llama_adapter_fold import folded_weights
from tunelib.peft.params import is_adapter_key, lora_modules
from tunelib.quantization import nf4


def merged_weights(model: nn.Module) -> tuple[dict[str, PendingWeight], dict[str, object]]:
    """Return `(weights, config_updates)`: every weight of the model with its adapters merged in.

    Each adapted weight becomes `W + s·BA` (DoRA: rescaled per row to its magnitude), computed
    in fp32 and cast back to the base dtype; NF4 weights are dequantised; adapter keys are
    dropped. Values are computed from the module's parameters as they are when asked (so a
    writer may gather sharded ones first). Of weights tied together, only the first name is
    kept, as Hugging Face saves them, unless an adapter on one of them made them differ: then
    every name is written and `config_updates` is `{"tie_word_embeddings": False}`, which the
    caller must write into config.json (otherwise transformers would tie lm_head to the merged
    embedding again).

    A LLaMA-Adapter v2 model is folded by `folded_weights` (its prompts cannot be); for v1
    this raises ValueError, since prompts are all it has.
    """
    if llama_adapter_spec(model) is not None:
        return folded_weights(model)
    adapted = {f"{name}.weight": module for name, module in lora_modules(model).items()}
    weights = {}
    for key, value in model.state_dict(keep_vars=True).items():
        if is_adapter_key(key):
            continue
        module, attr = _owner(model, key)
        make = adapted[key].merged_weight if key in adapted else _live(module, attr)
        weights[key] = PendingWeight(tuple(value.shape), value.dtype, make)
    config_updates: dict[str, object] = {}
    for names in _tied_groups(model):
        if any(name in adapted for name in names):
            config_updates["tie_word_embeddings"] = False
        else:
            for alias in names[1:]:
                weights.pop(alias, None)
    return weights, config_updates


def merged_state_dict(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """`merged_weights` with every value computed: `(state_dict, config_updates)`.

    Tensors that need no merge are the model's own (not copies), so write them out before
    training on.
    """
    weights, updates = merged_weights(model)
    return {key: pending.make() for key, pending in weights.items()}, updates


def _owner(model: nn.Module, key: str) -> tuple[nn.Module, str]:
    module_name, _, attr = key.rpartition(".")
    return (model.get_submodule(module_name) if module_name else model), attr


def _live(module: nn.Module, attr: str) -> Callable[[], torch.Tensor]:
    # The attribute is read when the value is asked for: a writer may have put a gathered
    # (whole) tensor in place of a shard by then.
    return lambda: nf4.dequantize(getattr(module, attr))


def _tied_groups(model: nn.Module) -> list[list[str]]:
    """Names that share one tensor, for each tensor that has more than one name."""
    groups: dict[object, list[str]] = defaultdict(list)
    for name, param in model.named_parameters(remove_duplicate=False):
        groups[_identity(param)].append(name)
    return [names for names in groups.values() if len(names) > 1]


def _identity(t: torch.Tensor) -> object:
    # Tied weights may be one Parameter under two names, or two Parameters over one storage
    # (as a loader that assigns each name may leave them); both are the same weight.
    if t.is_meta or nf4.is_nf4(t) or isinstance(t, DTensor):
        return id(t)
    return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
