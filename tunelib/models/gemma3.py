"""Gemma 3 text models (1B, 4B, 12B, 27B) and `Gemma3ForCausalLM`.

Gemma 2's traits (norms stored as offsets from 1, embeddings x sqrt(hidden), GeGLU, tied,
norms before and after both attention and MLP, query_pre_attn_scalar) plus: RMSNorm on each q
and k head, five sliding-window layers to one global layer (`sliding_window_pattern` 6: layer
i is global when (i + 1) % 6 == 0), and two RoPE bases: sliding layers rotate with
`rope_local_base_freq` (10000) unscaled, global layers with `rope_theta` (1e6) and, from 4B
on, linear `rope_scaling` (factor 8). Published configs set no soft-capping; a
`final_logit_softcapping` that is set is applied, while `attn_logit_softcapping` is ignored
because transformers' Gemma 3 never applies it (our logits must be transformers').

4B and up are published as `Gemma3ForConditionalGeneration` folders (a vision tower too);
their text decoder has these numbers, but tunelib reads `Gemma3ForCausalLM` folders only
(docs/models.md, "Gemma 3 4B and up", makes one from the published folder).
"""

from __future__ import annotations

from tunelib.models.build import add_builders
from tunelib.models.config import FULL, SLIDING, DecoderConfig
from tunelib.models.gemma import GEMMA_TRAITS, read_gelu
from tunelib.models.hf_format import HFFormat, read_common, write_common

# The family, as plain data (tunelib.families reads it without importing this module).
FAMILY = {
    "title": "Gemma 3",
    "architecture": "Gemma3ForCausalLM",
    "model_type": "gemma3_text",
    # Gemma 3's tokenizer and chat markers are Gemma's (<start_of_turn>, <end_of_turn>); its
    # template folds a system message into the first user turn, as the built-in "gemma" format does.
    "tokenizer": "gemma_tokenizer",
    "chat_format": "gemma",
    "tokenizer_file": "tokenizer.model",
    # Shipped configs: label -> (builder size, Hub repo). Only 1B: the larger Hub folders are multimodal.
    "configs": {"1B": ("1b", "google/gemma-3-1b-it")},
}
ARCHITECTURE = FAMILY["architecture"]
# Gemma3TextConfig's defaults, for keys a config.json may leave out.
DEFAULTS = {"rms_norm_eps": 1e-6, "tie_word_embeddings": True, "max_position_embeddings": 131072, "head_dim": 256,
            "num_key_value_heads": 4, "rope_theta": 1_000_000.0}
GEMMA3_TRAITS = dict(GEMMA_TRAITS, sandwich_norms=True, qk_norm=True)
PATTERN = 6  # sliding_window_pattern: every 6th layer is global


def layer_pattern(num_layers: int, pattern: int = PATTERN) -> tuple[str, ...]:
    """Gemma 3's layer types: layer i is global when (i + 1) % pattern == 0, else sliding."""
    return tuple(FULL if (i + 1) % pattern == 0 else SLIDING for i in range(num_layers))


def _rope(hf: dict) -> tuple[dict, float]:
    """(config.json with one RoPE layout for the global layers, the sliding layers' base).

    transformers 5 writes `rope_parameters` per layer type; released files write rope_theta,
    rope_scaling (global layers) and rope_local_base_freq (sliding layers).
    """
    params = hf.get("rope_parameters") or {}
    if not any(isinstance(value, dict) for value in params.values()):
        return hf, float(hf.get("rope_local_base_freq", 10000.0))
    local = params.get(SLIDING) or {}
    if local.get("rope_type", "default") != "default":
        raise ValueError(f"rope_type {local['rope_type']!r} on sliding layers is not supported (only default)")
    flat = {key: value for key, value in hf.items() if key not in ("rope_parameters", "rope_scaling")}
    return {**flat, "rope_parameters": params.get(FULL) or {}}, float(local.get("rope_theta", 10000.0))


def read(hf: dict) -> DecoderConfig:
    """This architecture's config.json -> DecoderConfig (ValueError for values we cannot run)."""
    if hf.get("use_bidirectional_attention"):
        raise ValueError("use_bidirectional_attention (EmbeddingGemma) is not supported; tunelib trains causal models")
    if hf.get("sliding_window", 4096) is None:
        raise ValueError("sliding_window is null; Gemma 3's sliding layers need a window")
    flat, local_theta = _rope(hf)
    fields = read_common(flat, ARCHITECTURE, DEFAULTS)
    bias = bool(hf.get("attention_bias", False))
    pattern = hf.get("sliding_window_pattern", PATTERN)
    layers = hf.get("layer_types") or layer_pattern(fields["num_hidden_layers"], pattern)
    return DecoderConfig(
        **{**fields, **GEMMA3_TRAITS, "hidden_act": read_gelu(hf.get("hidden_activation", "gelu_pytorch_tanh"))},
        qkv_bias=bias, o_bias=bias,
        query_pre_attn_scalar=hf.get("query_pre_attn_scalar", 256),
        final_logit_softcapping=hf.get("final_logit_softcapping"),
        sliding_window=hf.get("sliding_window", 4096), layer_types=layers, rope_local_base_freq=local_theta)


def write(c: DecoderConfig) -> dict:
    """DecoderConfig -> config.json, for a folder saved without a source config."""
    layers = c.layer_types or ((SLIDING,) * c.num_hidden_layers if c.sliding_window else (FULL,) * c.num_hidden_layers)
    return {**write_common(c, FAMILY["model_type"]), "hidden_activation": c.hidden_act, "attention_bias": c.qkv_bias,
            "query_pre_attn_scalar": c.query_pre_attn_scalar, "final_logit_softcapping": c.final_logit_softcapping,
            "attn_logit_softcapping": None, "sliding_window": c.sliding_window or 4096, "layer_types": list(layers),
            "rope_local_base_freq": c.rope_local_base_freq}


HF_FORMAT = HFFormat(ARCHITECTURE, FAMILY["model_type"], read, write)
LINEAR_8 = {"rope_type": "linear", "factor": 8.0}


def _size(num_hidden_layers: int, **numbers):
    return DecoderConfig(architecture=ARCHITECTURE, rms_norm_eps=1e-6, rope_theta=1e6, rope_local_base_freq=10000.0,
                         tie_word_embeddings=True, num_hidden_layers=num_hidden_layers,
                         layer_types=layer_pattern(num_hidden_layers), **GEMMA3_TRAITS, **numbers)


def _large(num_hidden_layers: int, **numbers):
    # 4B and up: the multimodal vocabulary (image tokens), 128k context, linear RoPE scaling on global layers.
    return _size(num_hidden_layers, vocab_size=262208, max_position_embeddings=131072, sliding_window=1024,
                 rope_scaling=LINEAR_8, **numbers)


SIZES = {
    "1b": _size(26, vocab_size=262144, hidden_size=1152, intermediate_size=6912, num_attention_heads=4,
                num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256, sliding_window=512,
                max_position_embeddings=32768),
    "4b": _large(34, hidden_size=2560, intermediate_size=10240, num_attention_heads=8, num_key_value_heads=4,
                 head_dim=256, query_pre_attn_scalar=256),
    "12b": _large(48, hidden_size=3840, intermediate_size=15360, num_attention_heads=16, num_key_value_heads=8,
                  head_dim=256, query_pre_attn_scalar=256),
    "27b": _large(62, hidden_size=5376, intermediate_size=21504, num_attention_heads=32, num_key_value_heads=16,
                  head_dim=128, query_pre_attn_scalar=168),
}
BUILDERS = add_builders(globals(), "gemma3", FAMILY["title"], SIZES)
