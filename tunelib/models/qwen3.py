"""Qwen3 dense models (0.6B to 32B) and `Qwen3ForCausalLM`: RMSNorm on each q and k head, no biases.

head_dim is 128 at every size, whatever hidden_size / num_attention_heads would give; the
three smallest sizes tie their embeddings.
"""

from __future__ import annotations

from tunelib.models.build import add_builders
from tunelib.models.config import DecoderConfig
from tunelib.models.hf_format import HFFormat, read_common, write_common
from tunelib.models.qwen2 import read_sliding, write_sliding

# The family, as plain data (tunelib.families reads it without importing this module).
FAMILY = {
    "title": "Qwen3",
    "architecture": "Qwen3ForCausalLM",
    "model_type": "qwen3",
    "tokenizer": "qwen3_tokenizer",
    "chat_format": "qwen3",
    "tokenizer_file": "",
    "configs": {
        "0.6B": ("0_6b", "Qwen/Qwen3-0.6B"), "1.7B": ("1_7b", "Qwen/Qwen3-1.7B"), "4B": ("4b", "Qwen/Qwen3-4B"),
        "8B": ("8b", "Qwen/Qwen3-8B"), "14B": ("14b", "Qwen/Qwen3-14B"), "32B": ("32b", "Qwen/Qwen3-32B"),
    },
}

ARCHITECTURE = FAMILY["architecture"]
DEFAULTS = {"rms_norm_eps": 1e-6, "tie_word_embeddings": False, "hidden_act": "silu",
            "max_position_embeddings": 32768, "head_dim": 128}


def read(hf: dict) -> DecoderConfig:
    """This architecture's config.json -> DecoderConfig (ValueError for values we cannot run)."""
    bias = bool(hf.get("attention_bias", False))
    return DecoderConfig(**read_common(hf, ARCHITECTURE, DEFAULTS), qk_norm=True, qkv_bias=bias, o_bias=bias,
                         **read_sliding(hf))


def write(c: DecoderConfig) -> dict:
    """DecoderConfig -> config.json, for a folder saved without a source config."""
    return {**write_common(c, "qwen3"), "attention_bias": c.qkv_bias, **write_sliding(c)}


HF_FORMAT = HFFormat(ARCHITECTURE, FAMILY["model_type"], read, write)


def _size(**numbers):
    return DecoderConfig(architecture=ARCHITECTURE, vocab_size=151936, head_dim=128, num_key_value_heads=8,
                         qk_norm=True, rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=40960, **numbers)


SIZES = {
    "0_6b": _size(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                  tie_word_embeddings=True),
    "1_7b": _size(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                  tie_word_embeddings=True),
    "4b": _size(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                tie_word_embeddings=True),
    "8b": _size(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32),
    "14b": _size(hidden_size=5120, intermediate_size=17408, num_hidden_layers=40, num_attention_heads=40),
    "32b": _size(hidden_size=5120, intermediate_size=25600, num_hidden_layers=64, num_attention_heads=64),
}
BUILDERS = add_builders(globals(), "qwen3", FAMILY["title"], SIZES)
