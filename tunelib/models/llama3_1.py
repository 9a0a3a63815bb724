"""Llama 3.1 (8B, 70B, 405B): Llama 3 with "llama3" RoPE scaling for a 128k context."""

from tunelib.models.build import add_builders
from tunelib.models.llama3 import EIGHT_B, SEVENTY_B, llama3_size

# The family, as plain data (tunelib.families reads it without importing this module).
FAMILY = {
    "title": "Llama 3.1",
    "architecture": "LlamaForCausalLM",
    "model_type": "llama",
    "tokenizer": "llama3_tokenizer",
    "chat_format": "llama3",
    "tokenizer_file": "original/tokenizer.model",
    "configs": {
        "8B": ("8b", "meta-llama/Llama-3.1-8B-Instruct"), "70B": ("70b", "meta-llama/Llama-3.1-70B-Instruct"),
        "405B": ("405b", "meta-llama/Llama-3.1-405B-Instruct"),
    },
}

ROPE_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}


def _size(**numbers):
    return llama3_size(rope_scaling=ROPE_SCALING, max_position_embeddings=131072, **numbers)


SIZES = {
    "8b": _size(**EIGHT_B),
    "70b": _size(**SEVENTY_B),
    "405b": _size(hidden_size=16384, intermediate_size=53248, num_hidden_layers=126, num_attention_heads=128),
}
BUILDERS = add_builders(globals(), "llama3_1", FAMILY["title"], SIZES)
