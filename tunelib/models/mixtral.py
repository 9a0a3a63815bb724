"""Mixtral 8x7B and 8x22B and `MixtralForCausalLM`: Mistral's attention, 8 experts, 2 per token.

Every layer's MLP is a mixture of 8 experts of intermediate_size each; a token goes to its 2
most probable experts, weighted by those two probabilities renormalised to sum to 1.
Checkpoints name the block `block_sparse_moe` and the projections w1 (gate), w3 (up) and
w2 (down), one tensor per expert (`model.layers.N.block_sparse_moe.experts.E.w1.weight`);
we keep Hugging Face's in-memory names (`mlp.gate`, `mlp.experts.gate_proj`, stacked) and
map the keys on load and save. The router's training noise (`router_jitter_noise`) is not
supported.
"""

from __future__ import annotations

from tunelib.models.build import add_builders
from tunelib.models.config import DecoderConfig
from tunelib.models.hf_format import HFFormat, read_common, write_common
from tunelib.models.moe import ExpertKeys, expert_key_mapping

# The family, as plain data (tunelib.families reads it without importing this module).
FAMILY = {
    "title": "Mixtral",
    "architecture": "MixtralForCausalLM",
    "model_type": "mixtral",
    "tokenizer": "mistral_tokenizer",
    "chat_format": "mistral",
    "tokenizer_file": "tokenizer.model",
    "configs": {"8x7B": ("8x7b", "mistralai/Mixtral-8x7B-v0.1"),
                "8x22B": ("8x22b", "mistralai/Mixtral-8x22B-v0.1")},  # the base models: their sizes (vocabulary 32000)
    # DoRA, LLaMA-Adapter and QAT do not reach stacked experts (DoRA and QAT refuse them).
    "methods": ("full", "lora", "qlora", "lora_dpo", "full_dpo"),
}
ARCHITECTURE = FAMILY["architecture"]
# MixtralConfig's defaults, for keys a config.json leaves out.
DEFAULTS = {"rms_norm_eps": 1e-5, "tie_word_embeddings": False, "hidden_act": "silu",
            "max_position_embeddings": 4096 * 32, "num_key_value_heads": 8, "rope_theta": 1e6,
            "num_local_experts": 8, "num_experts_per_tok": 2, "router_aux_loss_coef": 0.001}


def read(hf: dict) -> DecoderConfig:
    """This architecture's config.json -> DecoderConfig (ValueError for values we cannot run)."""
    if hf.get("router_jitter_noise"):
        raise ValueError(f"router_jitter_noise {hf['router_jitter_noise']} is not supported (set it to 0.0)")

    def get(key):
        return hf[key] if hf.get(key) is not None else DEFAULTS[key]

    return DecoderConfig(**read_common(hf, ARCHITECTURE, DEFAULTS), sliding_window=hf.get("sliding_window"),
                         num_experts=get("num_local_experts"), num_experts_per_tok=get("num_experts_per_tok"),
                         norm_topk_prob=True, router_aux_loss_coef=float(get("router_aux_loss_coef")))


def write(c: DecoderConfig) -> dict:
    """DecoderConfig -> config.json, for a folder saved without a source config."""
    if not c.norm_topk_prob or c.moe_intermediate_size != c.intermediate_size or c.mlp_only_layers:
        raise ValueError("MixtralForCausalLM renormalises the top-k probabilities, sizes experts by "
                         "intermediate_size and has no dense layers")
    return {**write_common(c, "mixtral"), "sliding_window": c.sliding_window, "num_local_experts": c.num_experts,
            "num_experts_per_tok": c.num_experts_per_tok, "router_aux_loss_coef": c.router_aux_loss_coef,
            "router_jitter_noise": 0.0}


EXPERT_KEYS = ExpertKeys(block="block_sparse_moe", names=("w1", "w3", "w2"))
HF_FORMAT = HFFormat(ARCHITECTURE, "mixtral", read, write, **expert_key_mapping(EXPERT_KEYS))


def _size(**numbers):
    return DecoderConfig(**{"architecture": ARCHITECTURE, "num_key_value_heads": 8, "rms_norm_eps": 1e-5,
                            "rope_theta": 1e6, "num_experts": 8, "num_experts_per_tok": 2, "norm_topk_prob": True,
                            "vocab_size": 32000, **numbers})


SIZES = {
    "8x7b": _size(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                  max_position_embeddings=32768, router_aux_loss_coef=0.02),
    "8x22b": _size(hidden_size=6144, intermediate_size=16384, num_hidden_layers=56, num_attention_heads=48,
                   max_position_embeddings=65536, router_aux_loss_coef=0.001),
}
BUILDERS = add_builders(globals(), "mixtral", FAMILY["title"], SIZES)
