"""Llama 3.2 text models (1B, 3B): tied embeddings, RoPE scaling factor 32."""

from tunelib.models.build import add_builders
from tunelib.models.llama3 import llama3_size

# The family, as plain data (tunelib.families reads it without importing this module).
FAMILY = {
    "title": "Llama 3.2",
    "architecture": "LlamaForCausalLM",
    "model_type": "llama",
    "tokenizer": "llama3_tokenizer",
    "chat_format": "llama3",
    "tokenizer_file": "original/tokenizer.model",
    "configs": {
        "1B": ("1b", "meta-llama/Llama-3.2-1B-Instruct"), "3B": ("3b", "meta-llama/Llama-3.2-3B-Instruct"),
    },
}

ROPE_SCALING = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}


def _size(**numbers):
    return llama3_size(rope_scaling=ROPE_SCALING, max_position_embeddings=131072, tie_word_embeddings=True,
                       intermediate_size=8192, **numbers)


SIZES = {
    "1b": _size(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, head_dim=64),
    "3b": _size(hidden_size=3072, num_hidden_layers=28, num_attention_heads=24, head_dim=128),
}
BUILDERS = add_builders(globals(), "llama3_2", FAMILY["title"], SIZES)
