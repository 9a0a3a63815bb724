"""Map LoRAs on separate projections to one LoRA on a fused projection, and back.

Phi-3/Phi-4 checkpoints fuse q/k/v into `qkv_proj` and gate/up into `gate_up_proj` (rows
`[q | k | v]`); tunelib keeps them separate. Separate LoRAs of ranks r_i equal exactly one
LoRA of rank Σr_i on the fused weight: A stacked, B block-diagonal, and alpha chosen so the
scale stays the same (α' = s·R, or s·√R with rsLoRA). Parts with different scales are made
equal by folding the ratio into their B. DoRA magnitudes are per output row, so they simply
concatenate. Going back, each part gets the rows of B and a copy of the shared A (rank R).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from tunelib.peft.params import LORA_MODULES, adapter_owner, lora_modules
from tunelib.quantization import nf4

# Phi-3 / Phi-4 (Hugging Face names): the fused projection and its parts, in row order.
PHI3_FUSED_PROJECTIONS = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


@dataclass
class LoraWeights:
    """One module's adapter: A (r, in), B (out, r), alpha, and the DoRA magnitude (out,) if any."""

    A: torch.Tensor
    B: torch.Tensor
    alpha: float
    magnitude: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    def scaling(self, use_rslora: bool = False) -> float:
        """alpha/r, or alpha/sqrt(r) with rsLoRA; 0 for a rank-0 (absent) adapter."""
        if self.rank == 0:
            return 0.0
        return self.alpha / (math.sqrt(self.rank) if use_rslora else self.rank)


def fuse_lora(parts: Sequence[LoraWeights], *, use_rslora: bool = False) -> LoraWeights:
    """The single LoRA on the fused projection (rows in the order of `parts`) equal to `parts`.

    A part of rank 0 (A (0, in), B (out, 0)) stands for a projection without adapter; its
    rows of the fused delta are zero. Raises ValueError if only some parts have a DoRA
    magnitude, or if every part has rank 0.
    """
    has_magnitude = {p.magnitude is not None for p in parts}
    if len(has_magnitude) > 1:
        raise ValueError("either every part or none must have a DoRA magnitude")
    scales = [p.scaling(use_rslora) for p in parts]
    scale = next((x for x in scales if x), None)
    if scale is None:
        raise ValueError("at least one part must have an adapter of rank > 0")
    a = torch.cat([p.A for p in parts], dim=0)
    b = torch.block_diag(*[p.B * (x / scale) for p, x in zip(parts, scales)])
    rank = a.shape[0]
    alpha = scale * (math.sqrt(rank) if use_rslora else rank)
    magnitude = torch.cat([p.magnitude for p in parts]) if has_magnitude == {True} else None
    return LoraWeights(a, b.to(parts[0].B.dtype), alpha, magnitude)


def split_fused_lora(fused: LoraWeights, sizes: Sequence[int]) -> list[LoraWeights]:
    """Separate LoRAs, one per block of `sizes` output rows, equal to `fused` (each keeps its rank).

    Raises ValueError if `sizes` do not add up to the fused output size.
    """
    if sum(sizes) != fused.B.shape[0]:
        raise ValueError(f"part sizes {list(sizes)} add up to {sum(sizes)}, not the fused size {fused.B.shape[0]}")
    parts, start = [], 0
    for size in sizes:
        rows = slice(start, start + size)
        magnitude = None if fused.magnitude is None else fused.magnitude[rows].clone()
        parts.append(LoraWeights(fused.A.clone(), fused.B[rows].clone(), fused.alpha, magnitude))
        start += size
    return parts


def fuse_adapter_state_dict(state_dict: dict[str, torch.Tensor], *, parts: Sequence[str], fused: str,
                            alpha: float | dict[str, float], use_rslora: bool = False):
    """Rewrite an adapter state dict's separate part modules into fused ones.

    `parts` are the leaf names in row order (e.g. `("q_proj", "k_proj", "v_proj")`), `fused`
    the fused leaf name (`"qkv_proj"`), `alpha` the parts' alpha (one number, or per part
    leaf). Keys are our names or PEFT's (any prefix). Returns `(new_state_dict, rank_pattern,
    alpha_pattern)`, the patterns keyed by fused module name, for the adapter config.
    """
    alphas = alpha if isinstance(alpha, dict) else {p: alpha for p in parts}
    out, rank_pattern, alpha_pattern = dict(state_dict), {}, {}
    for prefix in sorted({k.split(f".{parts[0]}.")[0] for k in state_dict if f".{parts[0]}.lora_A." in k}):
        pieces = [_take(out, f"{prefix}.{p}", alphas[p]) for p in parts]
        merged = fuse_lora(pieces, use_rslora=use_rslora)
        _put(out, f"{prefix}.{fused}", merged)
        name = prefix.removeprefix("base_model.model.") + f".{fused}"
        rank_pattern[name], alpha_pattern[name] = merged.rank, merged.alpha
    return out, rank_pattern, alpha_pattern


def split_adapter_state_dict(state_dict: dict[str, torch.Tensor], *, fused: str, parts: Sequence[str],
                             sizes: Sequence[int], alpha: float) -> dict[str, torch.Tensor]:
    """Rewrite an adapter state dict's fused modules into separate part modules (see `split_fused_lora`).

    Each part keeps the fused rank and `alpha`, so the adapter config needs no pattern.
    """
    out = dict(state_dict)
    for prefix in sorted({k.split(f".{fused}.")[0] for k in state_dict if f".{fused}.lora_A." in k}):
        for part, piece in zip(parts, split_fused_lora(_take(out, f"{prefix}.{fused}", alpha), sizes)):
            _put(out, f"{prefix}.{part}", piece)
    return out


def _take(state_dict: dict, module: str, alpha: float) -> LoraWeights:
    return LoraWeights(state_dict.pop(f"{module}.lora_A.weight"), state_dict.pop(f"{module}.lora_B.weight"),
                       alpha, state_dict.pop(f"{module}.lora_magnitude_vector", None))


def _put(state_dict: dict, module: str, weights: LoraWeights) -> None:
    state_dict[f"{module}.lora_A.weight"] = weights.A
    state_dict[f"{module}.lora_B.weight"] = weights.B
    if weights.magnitude is not None:
        state_dict[f"{module}.lora_magnitude_vector"] = weights.magnitude


# ------------------------------------------------- a model with separate parts <-> PEFT fused


def fuse_for_peft(model: nn.Module, config: dict, tensors: dict[str, torch.Tensor],
                  fused_projections: dict[str, Sequence[str]]) -> tuple[dict, dict[str, torch.Tensor]]:
    """Rewrite an adapter config and tensors (our names) of `model` for a checkpoint with fused projections.

    `fused_projections` maps a fused leaf name to its parts in row order (see
    `PHI3_FUSED_PROJECTIONS`). A part without adapter joins with rank 0 (and, under DoRA, the
    norm of its base rows as magnitude, so its rows stay unchanged). Each fused module gets
    its rank and alpha in `rank_pattern`/`alpha_pattern`; `target_modules` names the fused
    modules instead of their parts. Returns the new `(config, tensors)`.
    """
    part_of = {part: fused for fused, parts in fused_projections.items() for part in parts}
    tensors, config = dict(tensors), dict(config)
    # Patterns for the parts no longer name a module of the fused checkpoint.
    rank_pattern, alpha_pattern = (
        {k: v for k, v in (config.get(key) or {}).items() if k.rpartition(".")[2] not in part_of}
        for key in ("rank_pattern", "alpha_pattern")
    )
    groups = sorted({(name.rpartition(".")[0], part_of[name.rpartition(".")[2]])
                     for name in lora_modules(model) if name.rpartition(".")[2] in part_of})
    for parent, fused in groups:
        pieces = [_part_weights(model, f"{parent}.{part}", tensors, bool(config.get("use_dora")))
                  for part in fused_projections[fused]]
        merged = fuse_lora(pieces, use_rslora=bool(config.get("use_rslora")))
        _put(tensors, f"{parent}.{fused}", merged)
        rank_pattern[f"{parent}.{fused}"], alpha_pattern[f"{parent}.{fused}"] = merged.rank, merged.alpha
    config["target_modules"] = sorted({_fused_name(t, part_of) for t in config["target_modules"]})
    config["rank_pattern"], config["alpha_pattern"] = rank_pattern, alpha_pattern
    return config, tensors


def _fused_name(name: str, part_of: dict[str, str]) -> str:
    parent, _, leaf = name.rpartition(".")
    if leaf not in part_of:
        return name
    return f"{parent}.{part_of[leaf]}" if parent else part_of[leaf]


def _part_weights(model: nn.Module, name: str, tensors: dict, use_dora: bool) -> LoraWeights:
    module = model.get_submodule(name)
    if isinstance(module, LORA_MODULES):
        return _take(tensors, name, module.spec.alpha)
    weight = nf4.dequantize(module.weight)
    empty = weight.new_zeros
    magnitude = weight.float().norm(dim=1).to(weight.dtype) if use_dora else None
    return LoraWeights(empty(0, module.in_features), empty(module.out_features, 0), 0.0, magnitude)


def peft_module_name(name: str, fused_projections: dict[str, Sequence[str]] | None) -> str:
    """The name a module of ours has in a fused checkpoint: `...self_attn.q_proj` -> `...self_attn.qkv_proj`."""
    if not fused_projections:
        return name
    return _fused_name(name, {part: fused for fused, parts in fused_projections.items() for part in parts})


def split_from_peft(model: nn.Module, tensors: dict[str, torch.Tensor],
                    fused_projections: dict[str, Sequence[str]], prefix: str = "") -> dict[str, torch.Tensor]:
    """Rewrite adapter tensors of fused modules (keys `prefix` + name) into the parts `model` has.

    Each part gets the rows of B and a copy of A at the fused rank; the sizes come from
    the model's part modules.
    """
    tensors = dict(tensors)
    for key in [k for k in tensors if k.endswith(".lora_A.weight")]:
        parent, _, fused = adapter_owner(key[len(prefix):]).rpartition(".")
        if fused not in fused_projections:
            continue
        parts = fused_projections[fused]
        sizes = [model.get_submodule(f"{parent}.{part}").out_features for part in parts]
        for part, piece in zip(parts, split_fused_lora(_take(tensors, f"{prefix}{parent}.{fused}", 0.0), sizes)):
            _put(tensors, f"{prefix}{parent}.{part}", piece)
    return tensors
