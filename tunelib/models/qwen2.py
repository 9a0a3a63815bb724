"""Qwen2 (0.5B, 1.5B, 7B, 72B) and its Hugging Face format `Qwen2ForCausalLM`.

Llama's layout plus biases on the q/k/v projections; the small sizes tie their embeddings.
The format also serves Qwen2.5 (qwen2_5.py) and lends its sliding-window keys to Qwen3.
"""

from __future__ import annotations

from tunelib.models.build import add_builders
from tunelib.models.config import FULL, SLIDING, DecoderConfig
from tunelib.models.hf_format import HFFormat, read_common, write_common

# The family, as plain data (tunelib.families reads it without importing this module).
FAMILY = {
    "title": "Qwen2",
    "architecture": "Qwen2ForCausalLM",
    "model_type": "qwen2",
    "tokenizer": "qwen2_tokenizer",
    "chat_format": "qwen2",
    "tokenizer_file": "",
    "configs": {
        "0.5B": ("0_5b", "Qwen/Qwen2-0.5B-Instruct"), "1.5B": ("1_5b", "Qwen/Qwen2-1.5B-Instruct"),
        "7B": ("7b", "Qwen/Qwen2-7B-Instruct"), "72B": ("72b", "Qwen/Qwen2-72B-Instruct"),
    },
}

ARCHITECTURE = FAMILY["architecture"]
DEFAULTS = {"rms_norm_eps": 1e-6, "tie_word_embeddings": False, "hidden_act": "silu", "max_position_embeddings": 32768}


def read_sliding(hf: dict) -> dict:
    """sliding_window and layer_types from Qwen's keys (windows only with use_sliding_window)."""
    if not hf.get("use_sliding_window", False):
        return {}
    layers, first = hf["num_hidden_layers"], hf.get("max_window_layers", 28)
    types = hf.get("layer_types") or [SLIDING if i >= first else FULL for i in range(layers)]
    return {"sliding_window": hf.get("sliding_window", 4096), "layer_types": tuple(types)}


def write_sliding(c: DecoderConfig) -> dict:
    """Qwen's sliding-window keys for `c`."""
    types = c.layer_types or (SLIDING if c.sliding_window else FULL,) * c.num_hidden_layers
    first = types.index(SLIDING) if SLIDING in types else c.num_hidden_layers
    return {"use_sliding_window": c.sliding_window is not None, "sliding_window": c.sliding_window,
            "max_window_layers": first, "layer_types": list(types)}


def qwen2_config(**fields) -> DecoderConfig:
    """A Qwen2-format DecoderConfig: q/k/v biases, RoPE base 1e6."""
    return DecoderConfig(**{"architecture": ARCHITECTURE, "qkv_bias": True, "rope_theta": 1e6, "rms_norm_eps": 1e-6,
                            "max_position_embeddings": 32768, **fields})


def read(hf: dict) -> DecoderConfig:
    """This architecture's config.json -> DecoderConfig (ValueError for values we cannot run)."""
    return DecoderConfig(**read_common(hf, ARCHITECTURE, DEFAULTS), qkv_bias=True, **read_sliding(hf))


def write(c: DecoderConfig) -> dict:
    """DecoderConfig -> config.json, for a folder saved without a source config."""
    return {**write_common(c, "qwen2"), **write_sliding(c)}


HF_FORMAT = HFFormat(ARCHITECTURE, FAMILY["model_type"], read, write)

SMALL_VOCAB, LARGE_VOCAB = 151936, 152064
SIZES = {
    "0_5b": qwen2_config(vocab_size=SMALL_VOCAB, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
    "1_5b": qwen2_config(vocab_size=SMALL_VOCAB, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True),
    "7b": qwen2_config(vocab_size=LARGE_VOCAB, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4),
    "72b": qwen2_config(vocab_size=LARGE_VOCAB, hidden_size=8192, intermediate_size=29568, num_hidden_layers=80,
                        num_attention_heads=64, num_key_value_heads=8),
}
BUILDERS = add_builders(globals(), "qwen2", FAMILY["title"], SIZES)
