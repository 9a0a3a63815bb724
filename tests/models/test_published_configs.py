"""The named sizes against `config.json` files as their publishers ship them on the Hub.

The dicts are the published files (keys that only matter to other tools included), so this
checks both the size tables and that a real config.json reads into exactly that model.
"""

from __future__ import annotations

import pytest

from tunelib.models import builders, config_from_dict

LLAMA_COMMON = {"architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
                "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu", "initializer_range": 0.02,
                "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama", "pretraining_tp": 1,
                "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "torch_dtype": "bfloat16", "use_cache": True,
                "vocab_size": 128256}
QWEN2_COMMON = {"architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
                "eos_token_id": 151643, "hidden_act": "silu", "initializer_range": 0.02, "model_type": "qwen2",
                "rope_theta": 1000000.0, "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False}
QWEN3_COMMON = {"architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
                "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
                "initializer_range": 0.02, "max_position_embeddings": 40960, "model_type": "qwen3",
                "num_key_value_heads": 8, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000,
                "sliding_window": None, "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False,
                "vocab_size": 151936}

PUBLISHED = {
    "llama3_1_8b": {**LLAMA_COMMON, "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
                    "num_hidden_layers": 32, "num_key_value_heads": 8, "tie_word_embeddings": False,
                    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                     "original_max_position_embeddings": 8192, "rope_type": "llama3"}},
    "llama3_2_3b": {**LLAMA_COMMON, "head_dim": 128, "hidden_size": 3072, "intermediate_size": 8192,
                    "num_attention_heads": 24, "num_hidden_layers": 28, "num_key_value_heads": 8,
                    "tie_word_embeddings": True,
                    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                     "original_max_position_embeddings": 8192, "rope_type": "llama3"}},
    "qwen2_0_5b": {**QWEN2_COMMON, "hidden_size": 896, "intermediate_size": 4864, "max_position_embeddings": 131072,
                   "max_window_layers": 24, "num_attention_heads": 14, "num_hidden_layers": 24,
                   "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "sliding_window": 131072,
                   "tie_word_embeddings": True, "vocab_size": 151936},
    "qwen2_5_3b": {**QWEN2_COMMON, "hidden_size": 2048, "intermediate_size": 11008, "max_position_embeddings": 32768,
                   "max_window_layers": 36, "num_attention_heads": 16, "num_hidden_layers": 36,
                   "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "sliding_window": 32768,
                   "tie_word_embeddings": True, "use_mrope": False, "vocab_size": 151936},
    "qwen2_5_7b": {**QWEN2_COMMON, "hidden_size": 3584, "intermediate_size": 18944, "max_position_embeddings": 131072,
                   "max_window_layers": 28, "num_attention_heads": 28, "num_hidden_layers": 28,
                   "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "sliding_window": 131072,
                   "tie_word_embeddings": False, "use_mrope": False, "vocab_size": 152064},
    "qwen2_5_14b": {**QWEN2_COMMON, "hidden_size": 5120, "intermediate_size": 13824, "max_position_embeddings": 131072,
                    "max_window_layers": 48, "num_attention_heads": 40, "num_hidden_layers": 48,
                    "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "sliding_window": 131072,
                    "tie_word_embeddings": False, "vocab_size": 152064},
    "qwen2_5_32b": {**QWEN2_COMMON, "hidden_size": 5120, "intermediate_size": 27648, "max_position_embeddings": 131072,
                    "max_window_layers": 64, "num_attention_heads": 40, "num_hidden_layers": 64,
                    "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "sliding_window": 131072,
                    "tie_word_embeddings": False, "vocab_size": 152064},
    "qwen3_4b": {**QWEN3_COMMON, "hidden_size": 2560, "intermediate_size": 9728, "max_window_layers": 36,
                 "num_attention_heads": 32, "num_hidden_layers": 36, "tie_word_embeddings": True},
    "qwen3_8b": {**QWEN3_COMMON, "hidden_size": 4096, "intermediate_size": 12288, "max_window_layers": 36,
                 "num_attention_heads": 32, "num_hidden_layers": 36, "tie_word_embeddings": False},
    "qwen3_14b": {**QWEN3_COMMON, "hidden_size": 5120, "intermediate_size": 17408, "max_window_layers": 40,
                  "num_attention_heads": 40, "num_hidden_layers": 40, "tie_word_embeddings": False},
    "qwen3_32b": {**QWEN3_COMMON, "hidden_size": 5120, "intermediate_size": 25600, "max_window_layers": 64,
                  "num_attention_heads": 64, "num_hidden_layers": 64, "tie_word_embeddings": False},
    "phi4_14b": {"architectures": ["Phi3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
                 "auto_map": {}, "bos_token_id": 100257, "embd_pdrop": 0.0, "eos_token_id": 100257,
                 "hidden_act": "silu", "hidden_size": 5120, "initializer_range": 0.02, "intermediate_size": 17920,
                 "max_position_embeddings": 16384, "model_type": "phi3", "num_attention_heads": 40,
                 "num_hidden_layers": 40, "num_key_value_heads": 10, "original_max_position_embeddings": 16384,
                 "pad_token_id": 100257, "resid_pdrop": 0.0, "rms_norm_eps": 1e-05, "rope_scaling": None,
                 "rope_theta": 250000, "sliding_window": None, "tie_word_embeddings": False,
                 "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 100352},
    "gemma3_1b": {"architectures": ["Gemma3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
                  "attn_logit_softcapping": None, "bos_token_id": 2, "cache_implementation": "hybrid",
                  "eos_token_id": [1, 106], "final_logit_softcapping": None, "head_dim": 256,
                  "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 1152, "initializer_range": 0.02,
                  "intermediate_size": 6912, "max_position_embeddings": 32768, "model_type": "gemma3_text",
                  "num_attention_heads": 4, "num_hidden_layers": 26, "num_key_value_heads": 1, "pad_token_id": 0,
                  "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000,
                  "rope_scaling": None, "rope_theta": 1000000, "sliding_window": 512, "sliding_window_pattern": 6,
                  "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 262144},
}

# Gemma 3 4B and up are published as Gemma3ForConditionalGeneration; these are the "text_config"
# entries of their config.json files, which leave the rest to Gemma3TextConfig's defaults.
GEMMA3_LINEAR = {"factor": 8.0, "rope_type": "linear"}
GEMMA3_TEXT_CONFIGS = {
    "gemma3_4b": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                  "num_hidden_layers": 34, "rope_scaling": GEMMA3_LINEAR, "sliding_window": 1024},
    "gemma3_12b": {"hidden_size": 3840, "intermediate_size": 15360, "model_type": "gemma3_text",
                   "num_attention_heads": 16, "num_hidden_layers": 48, "num_key_value_heads": 8,
                   "rope_scaling": GEMMA3_LINEAR, "sliding_window": 1024},
    "gemma3_27b": {"head_dim": 128, "hidden_size": 5376, "intermediate_size": 21504, "model_type": "gemma3_text",
                   "num_attention_heads": 32, "num_hidden_layers": 62, "num_key_value_heads": 16,
                   "query_pre_attn_scalar": 168, "rope_scaling": GEMMA3_LINEAR, "sliding_window": 1024},
}


@pytest.mark.parametrize("name", GEMMA3_TEXT_CONFIGS)
def test_gemma3_named_size_is_the_published_text_config(name):
    # transformers fills the defaults and writes the file as transformers 5 does (RoPE per layer type).
    transformers = pytest.importorskip("transformers")
    full = transformers.Gemma3TextConfig(**GEMMA3_TEXT_CONFIGS[name]).to_dict()
    published = config_from_dict({**full, "architectures": ["Gemma3ForCausalLM"]}, f"{name} text_config")
    named = builders()[name]().config
    assert named.differences(published) == []
    assert named.layer_types.count("full_attention") == named.num_hidden_layers // 6  # the 5:1 pattern


@pytest.mark.parametrize("name", PUBLISHED)
def test_named_size_is_the_published_config(name):
    published = config_from_dict(PUBLISHED[name], f"{name} config.json")
    named = builders()[name]().config
    assert named.differences(published) == []
