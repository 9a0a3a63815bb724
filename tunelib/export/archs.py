"""What llama.cpp expects of each architecture: its GGUF name, metadata and tensor layouts.

The facts follow llama.cpp's own converter (convert_hf_to_gguf.py) and its model loader:

- Llama and Mistral load as `llama`, whose RoPE rotates interleaved pairs; Hugging Face
  rotates halves, so the rows of q_proj and k_proj are permuted per head (`permute_rows`).
  Llama 3.1's RoPE scaling travels as a `rope_freqs.weight` tensor of per-frequency factors.
- Qwen2/2.5, Qwen3, Gemma and Phi-3 use the half rotation themselves: no permutation.
- Gemma stores RMSNorm weights w around 0 and scales by (1 + w); llama.cpp scales by the
  stored weight, so every norm weight is written as 1 + w. Gemma's output layer is always
  its embedding.
- Phi-3's checkpoints fuse q/k/v and gate/up; llama.cpp reads them fused
  (`attn_qkv`, and `ffn_up` holding [gate | up]), so separate projections are fused again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import gguf
import torch

from tunelib.errors import CheckpointError
from tunelib.export.source import Source, Weight
from tunelib.models import DecoderConfig


@dataclass(frozen=True)
class Arch:
    """One llama.cpp architecture: its name, whether q/k rows are permuted, Gemma's norm offset."""

    name: gguf.MODEL_ARCH
    permute_qk: bool = False
    norm_plus_one: bool = False
    fused_phi3: bool = False
    pre_tokenizer: str = "default"  # llama.cpp's name for a BPE vocabulary's pre-tokenizer regex


ARCHS: dict[str, Arch] = {
    "LlamaForCausalLM": Arch(gguf.MODEL_ARCH.LLAMA, permute_qk=True, pre_tokenizer="llama-bpe"),
    "MistralForCausalLM": Arch(gguf.MODEL_ARCH.LLAMA, permute_qk=True),
    "Qwen2ForCausalLM": Arch(gguf.MODEL_ARCH.QWEN2, pre_tokenizer="qwen2"),
    "Qwen3ForCausalLM": Arch(gguf.MODEL_ARCH.QWEN3, pre_tokenizer="qwen2"),
    "GemmaForCausalLM": Arch(gguf.MODEL_ARCH.GEMMA, norm_plus_one=True),
    "Gemma2ForCausalLM": Arch(gguf.MODEL_ARCH.GEMMA2, norm_plus_one=True),
    "Phi3ForCausalLM": Arch(gguf.MODEL_ARCH.PHI3, fused_phi3=True),
}


def arch_for(config: DecoderConfig, where) -> Arch:
    """The llama.cpp architecture of `config`.

    Raises:
        CheckpointError: an architecture without a GGUF export (the message names the supported).
    """
    arch = ARCHS.get(config.architecture)
    if arch is None or config.num_experts is not None:
        supported = ", ".join(ARCHS)
        raise CheckpointError(f"{where} is a {config.architecture}; GGUF export supports {supported}")
    return arch


def write_metadata(writer: gguf.GGUFWriter, arch: Arch, c: DecoderConfig) -> list[str]:
    """Write the architecture's hyperparameters; return notes on what llama.cpp will run differently.

    Raises:
        CheckpointError: a RoPE scaling llama.cpp cannot be told about.
    """
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_key_length(c.head_dim)
    writer.add_value_length(c.head_dim)
    writer.add_rope_dimension_count(c.head_dim)
    writer.add_vocab_size(c.vocab_size)
    _write_rope_scaling(writer, c)
    if arch.name == gguf.MODEL_ARCH.GEMMA2:
        writer.add_attn_logit_softcapping(c.attn_logit_softcapping or 0.0)
        writer.add_final_logit_softcapping(c.final_logit_softcapping or 0.0)
    if arch.name == gguf.MODEL_ARCH.GEMMA2 and c.sliding_window:
        writer.add_sliding_window(c.sliding_window)
    if arch.name == gguf.MODEL_ARCH.PHI3:  # older llama.cpp requires the key for Phi-3; 0 means none
        writer.add_sliding_window(c.sliding_window or 0)
    return _notes(arch, c)


def _write_rope_scaling(writer: gguf.GGUFWriter, c: DecoderConfig) -> None:
    scaling = c.rope_scaling or {}
    if scaling.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    elif scaling and scaling.get("rope_type") != "llama3":  # llama3's factors go in rope_freqs.weight
        raise CheckpointError(f"rope scaling {scaling.get('rope_type')!r} has no GGUF export")


def _notes(arch: Arch, c: DecoderConfig) -> list[str]:
    notes = []
    # llama.cpp's llama and qwen2 models have no sliding window, and its Phi-3 has it switched off.
    if arch.name in (gguf.MODEL_ARCH.LLAMA, gguf.MODEL_ARCH.QWEN2, gguf.MODEL_ARCH.PHI3) and c.sliding_window and (
            c.sliding_window < c.max_position_embeddings):
        notes.append(f"llama.cpp runs {c.architecture} without its sliding window ({c.sliding_window} tokens): "
                     "outputs differ on prompts longer than the window")
    if arch.name == gguf.MODEL_ARCH.GEMMA2 and c.query_pre_attn_scalar not in (None, c.head_dim):
        notes.append(f"llama.cpp scales Gemma 2 attention by head_dim ({c.head_dim}), not by "
                     f"query_pre_attn_scalar ({c.query_pre_attn_scalar:g}), except for the 46-layer 27B")
    return notes


def extra_tensors(c: DecoderConfig) -> dict[str, Weight]:
    """Tensors llama.cpp needs that a checkpoint does not hold: Llama 3.1's RoPE frequency factors."""
    scaling = c.rope_scaling or {}
    if scaling.get("rope_type") != "llama3":
        return {}
    factors = torch.tensor(llama3_rope_factors(c.head_dim, c.rope_theta, scaling), dtype=torch.float32)
    return {gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight": Weight(tuple(factors.shape), lambda: factors)}


def llama3_rope_factors(dim: int, theta: float, scaling: dict) -> list[float]:
    """Per-frequency divisors of Llama 3.1's RoPE: 1 for short wavelengths, `factor` for long
    ones, a smooth blend between (the numbers Meta's and Hugging Face's code compute)."""
    factor, low, high = float(scaling["factor"]), float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_context = float(scaling["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_context / low, old_context / high
    factors = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi * theta ** (i / dim)
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return factors


def permute_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of a q/k projection from HF's half-rotation order to llama.cpp's interleaved order:
    within each head, rows [0..d/2) and [d/2..d) become pairs (0, d/2), (1, d/2+1), ..."""
    return weight.reshape(n_heads, 2, weight.shape[0] // n_heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def unpermute_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of `permute_rows` (for tests and readers)."""
    return weight.reshape(n_heads, weight.shape[0] // n_heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def gguf_tensors(source: Source, arch: Arch) -> dict[str, Weight]:
    """llama.cpp's tensors, by GGUF name, in the layout it reads; values made when asked.

    Raises:
        CheckpointError: a weight llama.cpp has no place for.
    """
    c = source.config
    weights = _fused(source.weights, c) if arch.fused_phi3 else dict(source.weights)
    names = gguf.get_tensor_name_map(arch.name, c.num_hidden_layers)
    out = dict(extra_tensors(c))
    for hf_name, weight in weights.items():
        if hf_name == "lm_head.weight" and arch.name in (gguf.MODEL_ARCH.GEMMA, gguf.MODEL_ARCH.GEMMA2):
            _check_tied(weight, weights["model.embed_tokens.weight"])
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise CheckpointError(f"weight {hf_name} has no place in llama.cpp's {arch.name.name.lower()} model")
        out[name] = Weight(weight.shape, _transformed(hf_name, weight, arch, c))
    return out


def _check_tied(lm_head: Weight, embedding: Weight) -> None:
    """llama.cpp's Gemma always uses the embedding as its output layer: a copy of it may be dropped."""
    if lm_head.shape != embedding.shape or not torch.equal(lm_head.make(), embedding.make()):
        raise CheckpointError("this Gemma model's lm_head differs from its embedding (an adapter on lm_head?); "
                              "llama.cpp's Gemma always uses the embedding as its output layer")


def _transformed(hf_name: str, weight: Weight, arch: Arch, c: DecoderConfig) -> Callable[[], torch.Tensor]:
    def make() -> torch.Tensor:
        t = weight.make().float()
        if arch.permute_qk and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            t = permute_rows(t, c.num_attention_heads)
        elif arch.permute_qk and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            t = permute_rows(t, c.num_key_value_heads)
        elif arch.norm_plus_one and hf_name.endswith("norm.weight"):
            t = t + 1
        return t

    return make


def _fused(weights: dict[str, Weight], c: DecoderConfig) -> dict[str, Weight]:
    """Phi-3's fused projections from separate ones (a tunelib-merged model has them separate)."""
    out = {}
    for name, weight in weights.items():
        if name.endswith("self_attn.q_proj.weight"):
            prefix = name[: -len("q_proj.weight")]
            out[prefix + "qkv_proj.weight"] = _cat([weights[f"{prefix}{p}_proj.weight"] for p in "qkv"])
        elif name.endswith("mlp.gate_proj.weight"):
            prefix = name[: -len("gate_proj.weight")]
            out[prefix + "gate_up_proj.weight"] = _cat([weight, weights[prefix + "up_proj.weight"]])
        elif not name.endswith(("self_attn.k_proj.weight", "self_attn.v_proj.weight", "mlp.up_proj.weight")):
            out[name] = weight
    return out


def _cat(parts: list[Weight]) -> Weight:
    shape = (sum(p.shape[0] for p in parts), *parts[0].shape[1:])
    return Weight(shape, lambda: torch.cat([p.make() for p in parts]))
