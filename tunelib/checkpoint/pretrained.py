"""A model with its weights from a Hugging Face folder, in one call."""

from __future__ import annotations

from pathlib import Path

import torch

from tunelib.checkpoint.hf_load import load_hf_weights
from tunelib.models import CausalLM, from_hf_config


def from_pretrained(folder: str | Path, dtype: torch.dtype | str | None = None,
                    device: torch.device | str | None = None) -> CausalLM:
    """A model with its weights, from a Hugging Face model folder.

    Args:
        folder: holds config.json and model.safetensors (or shards with an index, or .bin files).
        dtype: e.g. torch.bfloat16 or "bfloat16"; None keeps the checkpoint's dtype.
        device: where the weights go; None means CPU.

    Returns:
        CausalLM in eval mode; `model(token_ids)` on a (batch, seq) LongTensor gives
        logits (batch, seq, vocab).

    Raises:
        CheckpointError: a missing or unsupported config, or weights that do not fit it.
        ValueError: `dtype` names no torch dtype.
    """
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None) if dtype.isidentifier() else None
        if not isinstance(dtype, torch.dtype):
            raise ValueError("dtype must be a torch.dtype or a name such as 'bfloat16' or 'float32'")
    model = from_hf_config(folder)
    load_hf_weights(model, folder, dtype=dtype, device=device)
    return model.eval()
