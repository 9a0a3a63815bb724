"""Transformations applied to a loaded model, written once for every family.

Order matters and is fixed: activation checkpointing, then compile, then FSDP2 sharding
(torchtitan's order). Each works per decoder layer (`model.model.layers`) and keeps
parameter names unchanged, so checkpoints and PEFT keys stay Hugging Face's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.checkpoint import checkpoint


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a tunelib CausalLM."""
    return list(model.model.layers)


def activation_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each decoder layer's activations in backward instead of keeping them.

    The layer's forward is wrapped in place, rather than the layer in a wrapper module,
    so no `_checkpoint_wrapped_module` prefix ever reaches a state dict.
    """
    for layer in decoder_layers(model):
        inner = layer.forward

        def forward(*args: Any, _inner=inner, **kwargs: Any):
            if torch.is_grad_enabled():
                return checkpoint(_inner, *args, use_reentrant=False, **kwargs)
            return _inner(*args, **kwargs)

        layer.forward = forward


def compile_layers(model: torch.nn.Module) -> None:
    """torch.compile each decoder layer (regional compile: one graph reused by every layer)."""
    for layer in decoder_layers(model):
        layer.compile()


def shard(model: torch.nn.Module, cfg: Any, device: torch.device) -> None:
    """FSDP2: shard each decoder layer and then the root across the process group.

    Parameters stay in their loaded dtype (bf16 or fp32); gradients are reduced in fp32.
    `fsdp_cpu_offload` keeps parameters, gradients and optimizer state in CPU memory.
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    dtype = next(p for p in model.parameters()).dtype
    options = {
        "mp_policy": MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32),
        "reshard_after_forward": cfg.fsdp_reshard_after_forward,
    }
    if cfg.fsdp_cpu_offload:
        options["offload_policy"] = CPUOffloadPolicy()
    for layer in decoder_layers(model):
        fully_shard(layer, **options)
    # The root (embedding, final norm, lm_head) stays gathered from forward to backward: the
    # loss calls lm_head chunk by chunk, and regathering it per chunk would cost more than it saves.
    fully_shard(model, **{**options, "reshard_after_forward": False})
    # The loss calls `hidden` and `logits`, not forward: FSDP must gather around those too.
    for method in ("hidden", "logits"):
        register_fsdp_forward_method(model, method)
