"""What a recipe trains, and towards what: the two choices a fine-tuning recipe makes.

What is trained is read from the model config (adapter keys or none); the recipe says which it
runs, so a LoRA config given to the full recipe is refused in one line instead of training
something else. The objective (tunelib.training.objectives) is independent of it: DPO trains
LoRA adapters or every weight alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from tunelib.errors import ConfigError
from tunelib.peft import adapter_params, initialize_adapters, llama_adapter_spec, set_trainable, store_trained_in


@dataclass(frozen=True)
class Trained:
    """One kind of trained part. `name` is estimate's label ("full", "lora", "adapter")."""

    name: str
    adapters: bool  # only adapters train; the base stays frozen (and is the reference model of DPO)

    def check(self, model: torch.nn.Module) -> None:
        """Refuse a model whose config asks for another kind of training than this recipe's.

        Raises:
            ConfigError: which recipe, or which model keys, would fit.
        """
        has, llama = bool(adapter_params(model)), llama_adapter_spec(model) is not None
        if not self.adapters and has:
            raise ConfigError("the model config asks for adapters (lora_* or adapter keys) but this recipe trains "
                              "every weight; run the recipe's lora_ version (e.g. lora_finetune_single_device) or "
                              "remove them")
        if self.name == "adapter" and not llama:
            raise ConfigError("this recipe trains a LLaMA-Adapter but the model config adds none; set model.adapter=v1 "
                              "or v2 (LoRA keys belong to lora_finetune_single_device)")
        if self.name == "lora" and llama:
            raise ConfigError("the model config asks for a LLaMA-Adapter (model.adapter) but this recipe trains LoRA; "
                              "run adapter_finetune_single_device, or set model.adapter=null")
        if self.adapters and not has:
            raise ConfigError("this recipe trains adapters but the model config adds none; set e.g. "
                              "model.lora_attn_modules=[q_proj,v_proj] (or run the recipe's full_ version)")

    def start(self, model: torch.nn.Module, device, dtype: torch.dtype) -> None:
        """First values of the adapters (small, the same on every rank), before the base is sharded
        and loaded; only what trains is left trainable. DoRA magnitudes wait for `finish`."""
        if self.adapters:
            initialize_adapters(model, device, dtype)
            set_trainable(model)
        else:
            for p in model.parameters():
                p.requires_grad_(True)

    def finish(self, model: torch.nn.Module, device, dtype: torch.dtype) -> None:
        """After the base weights are loaded: DoRA magnitudes of a fresh run, and what else trains
        (LLaMA-Adapter v2's norms) in the adapters' dtype."""
        if self.adapters:
            initialize_adapters(model, device, dtype)
            store_trained_in(model, dtype)


FULL = Trained("full", adapters=False)
LORA = Trained("lora", adapters=True)  # LoRA, DoRA, QLoRA, QDoRA
LLAMA_ADAPTER = Trained("adapter", adapters=True)


@dataclass(frozen=True)
class Recipe:
    """What a recipe module gives `tunelib.training.setup.build_run`.

    name: the recipe's name without _single_device/_distributed, for the commands a run prints.
    trains: FULL, LORA or LLAMA_ADAPTER, or a tuple of them when the model config chooses.
    objective: `objective(cfg, parts)` -> the objective (tunelib.training.objective_setup).
    """

    name: str
    trains: Trained | tuple[Trained, ...]
    objective: Callable[[Any, Any], Any]

    def trained_for(self, model: torch.nn.Module) -> Trained:
        """What this run trains: the recipe's one kind, or of its kinds (a distillation student with or
        without adapters) the one the model config asks for.

        Raises:
            ConfigError: the model config asks for a kind this recipe does not train.
        """
        kinds = self.trains if isinstance(self.trains, tuple) else (self.trains,)
        has = bool(adapter_params(model))
        kind = next((k for k in kinds if k.adapters == has), kinds[0])
        kind.check(model)
        return kind
