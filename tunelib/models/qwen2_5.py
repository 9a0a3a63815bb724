"""Qwen2.5 (0.5B to 72B): the Qwen2 architecture; 14B and up use rms_norm_eps 1e-5."""

from tunelib.models import qwen2
from tunelib.models.build import add_builders
from tunelib.models.qwen2 import LARGE_VOCAB, qwen2_config

# The family, as plain data (tunelib.families reads it without importing this module).
FAMILY = {
    "title": "Qwen2.5",
    "architecture": "Qwen2ForCausalLM",
    "model_type": "qwen2",
    "tokenizer": "qwen2_5_tokenizer",
    "chat_format": "qwen2_5",
    "tokenizer_file": "",
    "configs": {
        "0.5B": ("0_5b", "Qwen/Qwen2.5-0.5B-Instruct"), "1.5B": ("1_5b", "Qwen/Qwen2.5-1.5B-Instruct"),
        "3B": ("3b", "Qwen/Qwen2.5-3B-Instruct"), "7B": ("7b", "Qwen/Qwen2.5-7B-Instruct"),
        "14B": ("14b", "Qwen/Qwen2.5-14B-Instruct"), "32B": ("32b", "Qwen/Qwen2.5-32B-Instruct"),
        "72B": ("72b", "Qwen/Qwen2.5-72B-Instruct"),
    },
}


def _large(**numbers):
    return qwen2_config(vocab_size=LARGE_VOCAB, num_key_value_heads=8, rms_norm_eps=1e-5, **numbers)


SIZES = {
    "0_5b": qwen2.SIZES["0_5b"],
    "1_5b": qwen2.SIZES["1_5b"],
    "3b": qwen2_config(vocab_size=qwen2.SMALL_VOCAB, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                       num_attention_heads=16, num_key_value_heads=2, tie_word_embeddings=True),
    "7b": qwen2.SIZES["7b"],
    "14b": _large(hidden_size=5120, intermediate_size=13824, num_hidden_layers=48, num_attention_heads=40),
    "32b": _large(hidden_size=5120, intermediate_size=27648, num_hidden_layers=64, num_attention_heads=40),
    "72b": _large(hidden_size=8192, intermediate_size=29568, num_hidden_layers=80, num_attention_heads=64),
}
BUILDERS = add_builders(globals(), "qwen2_5", FAMILY["title"], SIZES)
