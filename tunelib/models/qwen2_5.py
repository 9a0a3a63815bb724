"""Qwen2.5 (0.5B to 72B): the Qwen2 architecture; 14B and up use rms_norm_eps 1e-5."""

from tunelib.models import qwen2
from tunelib.models.build import add_builders
from tunelib.models.qwen2 import LARGE_VOCAB, qwen2_config


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
BUILDERS = add_builders(globals(), "qwen2_5", "Qwen2.5", SIZES)
