"""Phi-4 (14B): the Phi-3 format (fused projections in the checkpoint) with grouped-query
attention, a 100k tiktoken vocabulary, RoPE base 250000 and no sliding window."""

from tunelib.models.build import add_builders
from tunelib.models.config import DecoderConfig
from tunelib.models.phi3 import ARCHITECTURE

# The family, as plain data (tunelib.families reads it without importing this module).
FAMILY = {
    "title": "Phi-4",
    "architecture": "Phi3ForCausalLM",
    "model_type": "phi3",
    "tokenizer": "phi4_tokenizer",
    "chat_format": "phi4",
    "tokenizer_file": "",
    "configs": {
        "14B": ("14b", "microsoft/phi-4"),
    },
}

SIZES = {
    "14b": DecoderConfig(architecture=ARCHITECTURE, vocab_size=100352, hidden_size=5120, intermediate_size=17920,
                         num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=10, rms_norm_eps=1e-5,
                         rope_theta=250000.0, max_position_embeddings=16384),
}
BUILDERS = add_builders(globals(), "phi4", FAMILY["title"], SIZES)
