"""Llama's Hugging Face format (`LlamaForCausalLM`), shared by Llama 2 and every Llama 3.x.

The sizes live in llama2.py, llama3.py, llama3_1.py, llama3_2.py and llama3_3.py.
"""

from __future__ import annotations

from tunelib.models.config import DecoderConfig
from tunelib.models.hf_format import HFFormat, read_common, write_common

ARCHITECTURE = "LlamaForCausalLM"
# LlamaConfig's defaults, for keys a config.json may leave out.
DEFAULTS = {"rms_norm_eps": 1e-6, "tie_word_embeddings": False, "hidden_act": "silu", "max_position_embeddings": 2048}


def llama_config(**fields) -> DecoderConfig:
    """A DecoderConfig with Llama's architecture name."""
    return DecoderConfig(architecture=ARCHITECTURE, **fields)


def read(hf: dict) -> DecoderConfig:
    """This architecture's config.json -> DecoderConfig (ValueError for values we cannot run)."""
    bias = bool(hf.get("attention_bias", False))  # Llama's flag covers q, k, v and o
    return DecoderConfig(**read_common(hf, ARCHITECTURE, DEFAULTS), qkv_bias=bias, o_bias=bias,
                         mlp_bias=bool(hf.get("mlp_bias", False)))


def write(c: DecoderConfig) -> dict:
    """DecoderConfig -> config.json, for a folder saved without a source config."""
    return {**write_common(c, "llama"), "attention_bias": c.qkv_bias, "mlp_bias": c.mlp_bias}


HF_FORMAT = HFFormat(ARCHITECTURE, "llama", read, write)
