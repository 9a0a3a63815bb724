"""Phi-3-mini (4k context) and `Phi3ForCausalLM`, whose checkpoints fuse two pairs of projections.

Checkpoints store `self_attn.qkv_proj` (rows [q | k | v]) and `mlp.gate_up_proj` (rows
[gate | up]); we keep HF Llama's separate modules, so this format splits them on load and
fuses them on save. Phi-3-mini also has a 2047-token sliding window. The 128k variants'
"longrope" scaling is not supported.
"""

from __future__ import annotations

import torch

from tunelib.models.build import add_builders
from tunelib.models.config import DecoderConfig
from tunelib.models.hf_format import HFFormat, Tensors, read_common, write_common

# The family, as plain data (tunelib.families reads it without importing this module).
FAMILY = {
    "title": "Phi-3",
    "architecture": "Phi3ForCausalLM",
    "model_type": "phi3",
    "tokenizer": "phi3_mini_tokenizer",
    "chat_format": "phi3",
    "tokenizer_file": "tokenizer.model",
    "configs": {
        "mini": ("mini", "microsoft/Phi-3-mini-4k-instruct"),
    },
}

ARCHITECTURE = FAMILY["architecture"]
DEFAULTS = {"rms_norm_eps": 1e-5, "tie_word_embeddings": False, "hidden_act": "silu", "max_position_embeddings": 4096}
QKV, GATE_UP = "self_attn.qkv_proj.weight", "mlp.gate_up_proj.weight"


def read(hf: dict) -> DecoderConfig:
    """This architecture's config.json -> DecoderConfig (ValueError for values we cannot run)."""
    return DecoderConfig(**read_common(hf, ARCHITECTURE, DEFAULTS), sliding_window=hf.get("sliding_window"))


def write(c: DecoderConfig) -> dict:
    """DecoderConfig -> config.json, for a folder saved without a source config."""
    return {**write_common(c, "phi3"), "sliding_window": c.sliding_window}


def split(name: str, tensor: torch.Tensor, c: DecoderConfig) -> Tensors:
    """A fused checkpoint tensor -> our separate projections (copies, so the fused one can be freed)."""
    if name.endswith(QKV):
        prefix = name[: -len(QKV)] + "self_attn."
        sizes = [c.num_attention_heads * c.head_dim] + [c.num_key_value_heads * c.head_dim] * 2
        if tensor.shape[0] != sum(sizes):
            return [(name, tensor)]  # the loader reports the unexpected key and its shape
        parts = tensor.split(sizes)
        return [(f"{prefix}{p}_proj.weight", t.clone()) for p, t in zip("qkv", parts)]
    if name.endswith(GATE_UP):
        prefix = name[: -len(GATE_UP)] + "mlp."
        gate, up = tensor.chunk(2)
        return [(prefix + "gate_proj.weight", gate.clone()), (prefix + "up_proj.weight", up.clone())]
    return [(name, tensor)]


def fuse(state_dict: dict[str, torch.Tensor], c: DecoderConfig) -> dict[str, torch.Tensor]:
    """Our state dict -> Phi-3's keys, fusing q/k/v and gate/up of every layer."""
    out = {}
    for name, tensor in state_dict.items():
        if name.endswith("self_attn.q_proj.weight"):
            prefix = name[: -len("q_proj.weight")]
            out[prefix + "qkv_proj.weight"] = torch.cat([state_dict[f"{prefix}{p}_proj.weight"] for p in "qkv"])
        elif name.endswith("mlp.gate_proj.weight"):
            prefix = name[: -len("gate_proj.weight")]
            out[prefix + "gate_up_proj.weight"] = torch.cat([tensor, state_dict[prefix + "up_proj.weight"]])
        elif not name.endswith(("self_attn.k_proj.weight", "self_attn.v_proj.weight", "mlp.up_proj.weight")):
            out[name] = tensor
    return out


FUSED_PROJECTIONS = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
HF_FORMAT = HFFormat(ARCHITECTURE, FAMILY["model_type"], read, write, split, fuse, FUSED_PROJECTIONS)

SIZES = {
    "mini": DecoderConfig(architecture=ARCHITECTURE, vocab_size=32064, hidden_size=3072, intermediate_size=8192,
                          num_hidden_layers=32, num_attention_heads=32, rms_norm_eps=1e-5, rope_theta=10000.0,
                          max_position_embeddings=4096, sliding_window=2047),
}
BUILDERS = add_builders(globals(), "phi3", FAMILY["title"], SIZES)
