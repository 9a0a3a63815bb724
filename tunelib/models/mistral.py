"""Mistral 7B (v0.1, v0.2, v0.3) and `MistralForCausalLM`: Llama's layout, optional sliding window.

v0.1 attends within a 4096-token window; v0.2 drops the window and raises the RoPE base to
1e6; v0.3 adds 768 tokens to the vocabulary. `mistral_7b` is v0.3.
"""

from __future__ import annotations

from tunelib.models.build import add_builders
from tunelib.models.config import DecoderConfig
from tunelib.models.hf_format import HFFormat, read_common, write_common

# The family, as plain data (tunelib.families reads it without importing this module).
FAMILY = {
    "title": "Mistral",
    "architecture": "MistralForCausalLM",
    "model_type": "mistral",
    "tokenizer": "mistral_tokenizer",
    "chat_format": "mistral",
    "tokenizer_file": "tokenizer.model",
    "configs": {
        "7B": ("7b", "mistralai/Mistral-7B-Instruct-v0.3"),
    },
}

ARCHITECTURE = FAMILY["architecture"]
DEFAULTS = {"rms_norm_eps": 1e-6, "tie_word_embeddings": False, "hidden_act": "silu",
            "max_position_embeddings": 131072, "num_key_value_heads": 8}


def read(hf: dict) -> DecoderConfig:
    """This architecture's config.json -> DecoderConfig (ValueError for values we cannot run)."""
    # MistralConfig's default window is 4096: a config.json without the key has one.
    return DecoderConfig(**read_common(hf, ARCHITECTURE, DEFAULTS), sliding_window=hf.get("sliding_window", 4096))


def write(c: DecoderConfig) -> dict:
    """DecoderConfig -> config.json, for a folder saved without a source config."""
    return {**write_common(c, "mistral"), "sliding_window": c.sliding_window}


HF_FORMAT = HFFormat(ARCHITECTURE, FAMILY["model_type"], read, write)


def _size(**numbers):
    return DecoderConfig(**{"architecture": ARCHITECTURE, "hidden_size": 4096, "intermediate_size": 14336,
                            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                            "rms_norm_eps": 1e-5, "max_position_embeddings": 32768, **numbers})


SIZES = {
    "7b": _size(vocab_size=32768, rope_theta=1e6),
    "7b_v0_1": _size(vocab_size=32000, rope_theta=10000.0, sliding_window=4096),
    "7b_v0_2": _size(vocab_size=32000, rope_theta=1e6),
    "7b_v0_3": _size(vocab_size=32768, rope_theta=1e6),
}
BUILDERS = add_builders(globals(), "mistral", FAMILY["title"], SIZES)
