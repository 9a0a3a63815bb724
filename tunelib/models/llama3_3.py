"""Llama 3.3 (70B): the Llama 3.1 70B architecture with new weights."""

from tunelib.models import llama3_1
from tunelib.models.build import add_builders

# The family, as plain data (tunelib.families reads it without importing this module).
FAMILY = {
    "title": "Llama 3.3",
    "architecture": "LlamaForCausalLM",
    "model_type": "llama",
    "tokenizer": "llama3_tokenizer",
    "chat_format": "llama3",
    "tokenizer_file": "original/tokenizer.model",
    "configs": {
        "70B": ("70b", "meta-llama/Llama-3.3-70B-Instruct"),
    },
}

SIZES = {"70b": llama3_1.SIZES["70b"]}
BUILDERS = add_builders(globals(), "llama3_3", FAMILY["title"], SIZES)
