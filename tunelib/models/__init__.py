"""Decoder-only language models in plain PyTorch, with Hugging Face's names and checkpoints.

    import tunelib.checkpoint
    model = tunelib.checkpoint.from_pretrained("/tmp/Llama-3.2-1B", dtype="bfloat16")
    logits = model(token_ids)                       # (batch, seq) -> (batch, seq, vocab)

Configs name a builder: `tunelib.models.llama3_1.llama3_1_8b` (one per family and size, see
docs/models.md) or `tunelib.models.from_hf_config`, which builds whatever a folder's
config.json describes. Builders return the model on the meta device, with any adapter keywords
recorded for `tunelib.peft.apply_peft`; weights come from `tunelib.checkpoint.load_hf_weights`.
This package imports nothing else of tunelib's but `tunelib.errors`: everything builds on it.
"""

from tunelib.models.adapter_options import AdapterOptions
from tunelib.models.attention import KVCache
from tunelib.models.build import from_hf_config
from tunelib.models.config import DecoderConfig
from tunelib.models.decoder import CausalLM
from tunelib.models.registry import builders, config_from_dict, hf_formats, read_hf_config

__all__ = ["AdapterOptions", "CausalLM", "DecoderConfig", "KVCache", "builders", "config_from_dict", "from_hf_config",
           "hf_formats", "read_hf_config"]
