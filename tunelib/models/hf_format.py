"""How a Hugging Face architecture maps onto `DecoderConfig` and our parameter names.

Each family module that owns an HF architecture defines `HF_FORMAT = HFFormat(...)`; the
registry finds it, and the loader and saver use it without knowing which family it is. The
helpers here read and write the `config.json` fields every family shares, accepting both the
legacy (`rope_theta`, `rope_scaling`) and the transformers-5 (`rope_parameters`) RoPE layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch

from tunelib.models.config import DecoderConfig

Tensors = Iterable[tuple[str, torch.Tensor]]
_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
_ROPE_KEYS = {"linear": ("factor",),
              "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}


def same_names(name: str, tensor: torch.Tensor, config: DecoderConfig) -> Tensors:
    """The usual case: a checkpoint key is our parameter name."""
    return [(name, tensor)]


def unchanged(state_dict: dict[str, torch.Tensor], config: DecoderConfig) -> dict[str, torch.Tensor]:
    """The usual case: our parameter names are the checkpoint's keys."""
    return state_dict


@dataclass(frozen=True)
class HFFormat:
    """One HF architecture: its config.json fields and, if they differ, its weight names."""

    architecture: str  # e.g. "LlamaForCausalLM", as listed in config.json "architectures"
    model_type: str  # e.g. "llama"
    read: Callable[[dict], DecoderConfig]  # config.json -> DecoderConfig (raises ValueError)
    write: Callable[[DecoderConfig], dict]  # DecoderConfig -> config.json, when no source file exists
    split: Callable[[str, torch.Tensor, DecoderConfig], Tensors] = same_names  # checkpoint tensor -> ours
    fuse: Callable[[dict, DecoderConfig], dict] = unchanged  # our state dict -> checkpoint keys
    # Checkpoint modules that fuse several of ours, e.g. {"qkv_proj": ("q_proj", "k_proj", "v_proj")}:
    # PEFT adapters for such a model name the fused module.
    fused_projections: dict[str, tuple[str, ...]] | None = None
    # Checkpoint keys that are one slice (along dim 0) of a stacked parameter of ours, such as
    # one expert's weight: key -> (our name, index), or None for every other key.
    stacked: Callable[[str], tuple[str, int] | None] = lambda key: None
    # A mixture-of-experts family's per-expert names (tunelib.models.moe.ExpertKeys), else None.
    expert_keys: Any = None


def read_common(hf: dict, architecture: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """DecoderConfig keywords shared by all families; `defaults` are the HF class defaults for absent keys."""
    missing = [key for key in _REQUIRED if key not in hf]
    if missing:
        raise ValueError(f"it lacks {', '.join(missing)}")

    def get(key):
        return hf.get(key, defaults.get(key))

    theta, scaling = read_rope(hf, defaults.get("rope_theta", 10000.0))
    return dict(
        architecture=architecture,
        **{key: hf[key] for key in _REQUIRED},
        num_key_value_heads=hf.get("num_key_value_heads") or defaults.get("num_key_value_heads"),
        head_dim=hf.get("head_dim") or defaults.get("head_dim"),
        rms_norm_eps=get("rms_norm_eps"),
        rope_theta=float(theta),
        rope_scaling=scaling,
        max_position_embeddings=get("max_position_embeddings"),
        tie_word_embeddings=bool(get("tie_word_embeddings")),
        hidden_act=get("hidden_act"),
    )


def read_rope(hf: dict, default_theta: float) -> tuple[float, dict | None]:
    """(rope_theta, normalised rope_scaling or None) from either config layout."""
    params = hf.get("rope_parameters") or {}
    if any(isinstance(value, dict) for value in params.values()):
        raise ValueError("rope_parameters per layer type are not supported")
    merged = {**(hf.get("rope_scaling") or {}), **params}
    theta = merged.pop("rope_theta", None) or hf.get("rope_theta") or default_theta
    rope_type = merged.pop("rope_type", None) or merged.pop("type", None) or "default"
    if merged.pop("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError("partial_rotary_factor other than 1.0 is not supported")
    if rope_type == "default":
        return theta, None
    if rope_type not in _ROPE_KEYS:
        raise ValueError(f"rope_type {rope_type!r} is not supported (supported: default, {', '.join(_ROPE_KEYS)})")
    absent = [key for key in _ROPE_KEYS[rope_type] if key not in merged]
    if absent:
        raise ValueError(f"rope_type {rope_type!r} needs {', '.join(absent)}")
    return theta, {"rope_type": rope_type, **{key: merged[key] for key in _ROPE_KEYS[rope_type]}}


def write_common(config: DecoderConfig, model_type: str) -> dict[str, Any]:
    """The config.json fields every family shares (legacy RoPE layout: every reader accepts it)."""
    c = config
    return {
        "architectures": [c.architecture], "model_type": model_type,
        "vocab_size": c.vocab_size, "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads, "head_dim": c.head_dim,
        "rms_norm_eps": c.rms_norm_eps, "rope_theta": c.rope_theta, "rope_scaling": c.rope_scaling,
        "max_position_embeddings": c.max_position_embeddings, "tie_word_embeddings": c.tie_word_embeddings,
        "hidden_act": c.hidden_act,
        # Token ids belong to the tokenizer, which a generated config does not know: say so
        # rather than inherit a class default that may not even fit the vocabulary.
        "bos_token_id": None, "eos_token_id": None, "pad_token_id": None,
    }
