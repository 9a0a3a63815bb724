"""Gemma 2 (2B, 9B, 27B) and `Gemma2ForCausalLM`.

Gemma's traits plus: norms before and after both attention and MLP, attention scores
soft-capped at 50 and final logits at 30, a 4096-token window on every other layer (starting
with the first), and an attention scale of query_pre_attn_scalar ** -0.5 (27B: 144 = 4608/32).
"""

from __future__ import annotations

from tunelib.models.build import add_builders
from tunelib.models.config import DecoderConfig, alternating_layers
from tunelib.models.gemma import GEMMA_TRAITS, read_gelu
from tunelib.models.hf_format import HFFormat, read_common, write_common

# The family, as plain data (tunelib.families reads it without importing this module).
FAMILY = {
    "title": "Gemma 2",
    "architecture": "Gemma2ForCausalLM",
    "model_type": "gemma2",
    "tokenizer": "gemma_tokenizer",
    "chat_format": "gemma",
    "tokenizer_file": "tokenizer.model",
    "configs": {
        "2B": ("2b", "google/gemma-2-2b-it"), "9B": ("9b", "google/gemma-2-9b-it"),
        "27B": ("27b", "google/gemma-2-27b-it"),
    },
}

ARCHITECTURE = FAMILY["architecture"]
DEFAULTS = {"rms_norm_eps": 1e-6, "tie_word_embeddings": True, "max_position_embeddings": 8192, "head_dim": 256,
            "num_key_value_heads": 4}
GEMMA2_TRAITS = dict(GEMMA_TRAITS, sandwich_norms=True)


def read(hf: dict) -> DecoderConfig:
    """This architecture's config.json -> DecoderConfig (ValueError for values we cannot run)."""
    fields = read_common(hf, ARCHITECTURE, DEFAULTS)
    bias = bool(hf.get("attention_bias", False))
    return DecoderConfig(
        **{**fields, **GEMMA2_TRAITS, "hidden_act": read_gelu(hf.get("hidden_activation", "gelu_pytorch_tanh"))},
        qkv_bias=bias, o_bias=bias,
        query_pre_attn_scalar=hf.get("query_pre_attn_scalar", 256),
        attn_logit_softcapping=hf.get("attn_logit_softcapping", 50.0),
        final_logit_softcapping=hf.get("final_logit_softcapping", 30.0),
        sliding_window=hf.get("sliding_window", 4096),
        layer_types=hf.get("layer_types") or alternating_layers(fields["num_hidden_layers"]))


def write(c: DecoderConfig) -> dict:
    """DecoderConfig -> config.json, for a folder saved without a source config."""
    return {**write_common(c, "gemma2"), "hidden_activation": c.hidden_act, "attention_bias": c.qkv_bias,
            "query_pre_attn_scalar": c.query_pre_attn_scalar, "attn_logit_softcapping": c.attn_logit_softcapping,
            "final_logit_softcapping": c.final_logit_softcapping, "sliding_window": c.sliding_window,
            "layer_types": list(c.layer_types or alternating_layers(c.num_hidden_layers))}


HF_FORMAT = HFFormat(ARCHITECTURE, FAMILY["model_type"], read, write)


def _size(num_hidden_layers: int, **numbers):
    return DecoderConfig(architecture=ARCHITECTURE, vocab_size=256000, rms_norm_eps=1e-6, max_position_embeddings=8192,
                         tie_word_embeddings=True, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                         sliding_window=4096, num_hidden_layers=num_hidden_layers,
                         layer_types=alternating_layers(num_hidden_layers), **GEMMA2_TRAITS, **numbers)


SIZES = {
    "2b": _size(26, hidden_size=2304, intermediate_size=9216, num_attention_heads=8, num_key_value_heads=4,
                head_dim=256, query_pre_attn_scalar=256),
    "9b": _size(42, hidden_size=3584, intermediate_size=14336, num_attention_heads=16, num_key_value_heads=8,
                head_dim=256, query_pre_attn_scalar=256),
    "27b": _size(46, hidden_size=4608, intermediate_size=36864, num_attention_heads=32, num_key_value_heads=16,
                 head_dim=128, query_pre_attn_scalar=144),
}
BUILDERS = add_builders(globals(), "gemma2", FAMILY["title"], SIZES)
