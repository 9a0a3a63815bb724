"""Switching a model's LoRA/DoRA adapters off for a while (the reference model of preference training)."""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn

from tunelib.errors import ConfigError
from tunelib.peft.llama_adapter import llama_adapter_spec
from tunelib.peft.params import lora_modules


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every LoRA/DoRA module computes its frozen base alone (`W x + b`, or the
    embedding lookup), as the model was before training: PEFT's `disable_adapter()`.

    Raises:
        ConfigError: the model has a LLaMA-Adapter, whose prompts cannot be switched off this way.
    """
    if llama_adapter_spec(model) is not None:
        raise ConfigError("a LLaMA-Adapter cannot be switched off to give a reference model; use LoRA or DoRA")
    modules = list(lora_modules(model).values())
    for module in modules:
        # An instance attribute wins over the class's forward; nn.Module.__call__ finds it.
        # Embeddings look their base up with nn.Embedding's forward; every other LoRA module
        # (linear, DoRA, stacked experts) has a base_forward.
        is_embedding = isinstance(module, nn.Embedding)
        module.forward = nn.Embedding.forward.__get__(module) if is_embedding else module.base_forward
    try:
        yield model
    finally:
        for module in modules:
            del module.forward
