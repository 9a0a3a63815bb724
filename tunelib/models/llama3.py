"""Llama 3 (8B, 70B): 128k tiktoken vocabulary, RoPE base 500000, 8k context."""

from tunelib.models.build import add_builders
from tunelib.models.llama import llama_config

# The family, as plain data (tunelib.families reads it without importing this module).
FAMILY = {
    "title": "Llama 3",
    "architecture": "LlamaForCausalLM",
    "model_type": "llama",
    "tokenizer": "llama3_tokenizer",
    "chat_format": "llama3",
    "tokenizer_file": "original/tokenizer.model",
    "configs": {
        "8B": ("8b", "meta-llama/Meta-Llama-3-8B-Instruct"),
        "70B": ("70b", "meta-llama/Meta-Llama-3-70B-Instruct"),
    },
}


def llama3_size(**fields):
    """Llama 3 numbers shared by every 3.x release; `fields` adds the size (and any RoPE scaling)."""
    return llama_config(**{"vocab_size": 128256, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
                           "max_position_embeddings": 8192, "num_key_value_heads": 8, **fields})


EIGHT_B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32)
SEVENTY_B = dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64)

SIZES = {"8b": llama3_size(**EIGHT_B), "70b": llama3_size(**SEVENTY_B)}
BUILDERS = add_builders(globals(), "llama3", FAMILY["title"], SIZES)
