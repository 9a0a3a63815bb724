"""Decoder-only language models in plain PyTorch, with Hugging Face's names and checkpoints.

    import tunelib.models
    model = tunelib.models.from_pretrained("/tmp/Llama-3.2-1B", dtype="bfloat16")
    logits = model(token_ids)                       # (batch, seq) -> (batch, seq, vocab)

Configs name a builder: `tunelib.models.llama3_1.llama3_1_8b` (one per family and size, see
docs/models.md) or `tunelib.models.from_hf_config`, which builds whatever a folder's
config.json describes. Builders return the model on the meta device; weights come from
`tunelib.checkpoint.load_hf_weights`.
"""

from tunelib.models.attention import KVCache
from tunelib.models.build import from_hf_config, from_pretrained
from tunelib.models.config import DecoderConfig
from tunelib.models.decoder import CausalLM
from tunelib.models.registry import builders, config_from_dict, hf_formats, read_hf_config

__all__ = ["CausalLM", "DecoderConfig", "KVCache", "builders", "config_from_dict", "from_hf_config",
           "from_pretrained", "hf_formats", "read_hf_config"]
