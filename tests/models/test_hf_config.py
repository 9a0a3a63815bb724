"""Reading config.json as published: both RoPE layouts, family defaults, unsupported values."""

from __future__ import annotations

import pytest

from tunelib.errors import CheckpointError
from tunelib.models import config_from_dict
from tunelib.models.config import FULL, SLIDING

BASE = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2)
LLAMA3_1_ROPE = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                 "original_max_position_embeddings": 8192, "rope_type": "llama3"}


def read(architecture: str, **fields):
    return config_from_dict({"architectures": [architecture], **BASE, **fields})


def test_legacy_and_transformers5_rope_layouts_read_the_same():
    legacy = read("LlamaForCausalLM", rope_theta=500000.0, rope_scaling=LLAMA3_1_ROPE)
    v5 = read("LlamaForCausalLM", rope_parameters={**LLAMA3_1_ROPE, "rope_theta": 500000.0})
    old_key = read("LlamaForCausalLM", rope_theta=500000.0,
                   rope_scaling={**{k: v for k, v in LLAMA3_1_ROPE.items() if k != "rope_type"}, "type": "llama3"})
    assert legacy == v5 == old_key
    assert legacy.rope_theta == 500000.0 and legacy.rope_scaling["factor"] == 8.0
    assert read("LlamaForCausalLM", rope_parameters={"rope_type": "default", "rope_theta": 1e6}).rope_scaling is None


def test_unsupported_rope_type_is_named():
    with pytest.raises(CheckpointError, match="rope_type 'yarn' is not supported"):
        read("Qwen2ForCausalLM", rope_scaling={"type": "yarn", "factor": 4.0})
    with pytest.raises(CheckpointError, match="rope_type 'longrope'"):
        read("Phi3ForCausalLM", rope_scaling={"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]})


def test_family_defaults_follow_transformers():
    # MistralConfig defaults to a 4096 window when the key is absent; null means none.
    assert read("MistralForCausalLM").sliding_window == 4096
    assert read("MistralForCausalLM", sliding_window=None).sliding_window is None
    # Qwen's window only applies with use_sliding_window, from max_window_layers on.
    assert read("Qwen2ForCausalLM", sliding_window=131072).sliding_window is None
    qwen = read("Qwen2ForCausalLM", use_sliding_window=True, sliding_window=16, max_window_layers=2)
    assert qwen.layer_types == (FULL, FULL, SLIDING, SLIDING)
    # Gemma configs say "gelu" but mean the tanh approximation; Gemma ties by default.
    gemma = read("GemmaForCausalLM", hidden_act="gelu", head_dim=16)
    assert gemma.hidden_act == "gelu_pytorch_tanh" and gemma.tie_word_embeddings and gemma.norm_offset == 1.0
    assert read("Gemma2ForCausalLM").layer_types == (SLIDING, FULL, SLIDING, FULL)
    assert read("Qwen3ForCausalLM").head_dim == 128


def test_model_type_is_used_when_architectures_is_absent():
    assert config_from_dict({"model_type": "qwen3", **BASE}).architecture == "Qwen3ForCausalLM"


def test_incomplete_config_names_the_missing_field():
    with pytest.raises(CheckpointError, match="lacks intermediate_size"):
        config_from_dict({"architectures": ["LlamaForCausalLM"], **{k: v for k, v in BASE.items()
                                                                    if k != "intermediate_size"}})
