"""Llama 2 (7B, 13B, 70B): 32k vocabulary, 4k context; 70B uses grouped-query attention."""

from tunelib.models.build import add_builders
from tunelib.models.llama import llama_config

# The family, as plain data (tunelib.families reads it without importing this module).
FAMILY = {
    "title": "Llama 2",
    "architecture": "LlamaForCausalLM",
    "model_type": "llama",
    "tokenizer": "llama2_tokenizer",
    "chat_format": "llama2",
    "tokenizer_file": "tokenizer.model",
    "configs": {
        "7B": ("7b", "meta-llama/Llama-2-7b-hf"), "13B": ("13b", "meta-llama/Llama-2-13b-hf"),
        "70B": ("70b", "meta-llama/Llama-2-70b-hf"),
    },
}


def _size(**numbers):
    return llama_config(vocab_size=32000, rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=4096,
                        **numbers)


SIZES = {
    "7b": _size(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32),
    "13b": _size(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40),
    "70b": _size(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                 num_key_value_heads=8),
}
BUILDERS = add_builders(globals(), "llama2", FAMILY["title"], SIZES)
