"""Gemma (2B, 7B) and `GemmaForCausalLM`.

Differences from Llama: RMSNorm scales by (1 + w) in fp32, embeddings are multiplied by
sqrt(hidden_size), the MLP is GeGLU (tanh GELU), embeddings are tied, and head_dim is 256
whatever hidden_size / heads gives (7B: 16 x 256 = 4096 != 3072). 2B uses one key/value head.
"""

from __future__ import annotations

from tunelib.models.build import add_builders
from tunelib.models.config import DecoderConfig
from tunelib.models.hf_format import HFFormat, read_common, write_common

# The family, as plain data (tunelib.families reads it without importing this module).
FAMILY = {
    "title": "Gemma",
    "architecture": "GemmaForCausalLM",
    "model_type": "gemma",
    "tokenizer": "gemma_tokenizer",
    "chat_format": "gemma",
    "tokenizer_file": "tokenizer.model",
    "configs": {
        "2B": ("2b", "google/gemma-2b-it"), "7B": ("7b", "google/gemma-7b-it"),
    },
}

ARCHITECTURE = FAMILY["architecture"]
DEFAULTS = {"rms_norm_eps": 1e-6, "tie_word_embeddings": True, "hidden_act": "gelu_pytorch_tanh",
            "max_position_embeddings": 8192, "head_dim": 256, "num_key_value_heads": 16}
GEMMA_TRAITS = dict(norm_offset=1.0, embed_scale=True, hidden_act="gelu_pytorch_tanh")


def read_gelu(name: str) -> str:
    """Gemma's released configs say "gelu" but were trained with the tanh approximation."""
    return "gelu_pytorch_tanh" if name == "gelu" else name


def read(hf: dict) -> DecoderConfig:
    """This architecture's config.json -> DecoderConfig (ValueError for values we cannot run)."""
    fields = read_common(hf, ARCHITECTURE, DEFAULTS)
    bias = bool(hf.get("attention_bias", False))
    return DecoderConfig(**{**fields, **GEMMA_TRAITS, "hidden_act": read_gelu(fields["hidden_act"])},
                         qkv_bias=bias, o_bias=bias)


def write(c: DecoderConfig) -> dict:
    """DecoderConfig -> config.json, for a folder saved without a source config."""
    return {**write_common(c, "gemma"), "attention_bias": c.qkv_bias}


HF_FORMAT = HFFormat(ARCHITECTURE, FAMILY["model_type"], read, write)


def _size(**numbers):
    return DecoderConfig(architecture=ARCHITECTURE, vocab_size=256000, head_dim=256, rms_norm_eps=1e-6,
                         max_position_embeddings=8192, tie_word_embeddings=True, **GEMMA_TRAITS, **numbers)


SIZES = {
    "2b": _size(hidden_size=2048, intermediate_size=16384, num_hidden_layers=18, num_attention_heads=8,
                num_key_value_heads=1),
    "7b": _size(hidden_size=3072, intermediate_size=24576, num_hidden_layers=28, num_attention_heads=16,
                num_key_value_heads=16),
}
BUILDERS = add_builders(globals(), "gemma", FAMILY["title"], SIZES)
