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
        return self.alpha / (math.sqrt(self.rank) if use_rslora else self.rank)


def fuse_lora(parts: Sequence[LoraWeights], *, use_rslora: bool = False) -> LoraWeights:
    """The single LoRA on the fused projection (rows in the order of `parts`) equal to `parts`.

    Raises ValueError if only some parts have a DoRA magnitude.
    """
    has_magnitude = {p.magnitude is not None for p in parts}
    if len(has_magnitude) > 1:
        raise ValueError("either every part or none must have a DoRA magnitude")
    scale = parts[0].scaling(use_rslora)
    a = torch.cat([p.A for p in parts], dim=0)
    b = torch.block_diag(*[p.B * (p.scaling(use_rslora) / scale) for p in parts])
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
