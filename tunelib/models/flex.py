"""Attention through `torch.nn.attention.flex_attention`: kernels that skip what is masked.

A `BlockMask` lists, per block of 128 queries, the blocks of 128 keys that hold any visible key;
flex attention computes only those, and the mask itself only inside blocks that are partly
visible. Packed documents, causal attention and sliding windows are such masks; Gemma 2's
soft-capping is a `score_mod` applied to each score inside the kernel. One block mask is built
per forward (per sliding window) and shared by every layer.

The block mask is built where the document ids already are, from tensor ops only (no value is
read back to the host), so on a GPU it costs no device sync.

On CUDA, flex attention outside torch.compile runs a compiled copy of itself (compiled once
here): eager flex attention is a reference implementation that materialises every score.
Inside a compiled layer it is part of the layer's graph.
"""

from __future__ import annotations

from typing import Callable

import torch

try:
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
except ImportError:  # torch < 2.5
    BlockMask = create_block_mask = flex_attention = None

BACKENDS = ("auto", "sdpa", "flex")
_COMPILED = None  # flex_attention under torch.compile, made on first use on a GPU


def available() -> bool:
    """Whether this torch has flex attention."""
    return flex_attention is not None


def backward_problem(device_type: str) -> str | None:
    """Why flex attention cannot train on `device_type` with this torch, or None if it can.

    torch 2.13 refuses gradients through flex attention on CPU (eager and compiled alike).
    """
    if not available():
        return f"torch {torch.__version__} has no torch.nn.attention.flex_attention (it needs torch >= 2.5)"
    if device_type == "cuda":
        return None
    q = torch.zeros(1, 1, 16, 16, device=device_type, requires_grad=True)
    try:
        flex_attention(q, q, q).sum().backward()
    except Exception as e:  # noqa: BLE001 - whatever torch refuses with, the answer is "cannot"
        return f"torch {torch.__version__}'s flex attention cannot train on {device_type} ({str(e).split('.')[0]})"
    return None


def uses_flex(backend: str, device: torch.device, *, masked: bool, cached: bool) -> bool:
    """Whether attention with these inputs goes through flex attention.

    `backend`: "flex" always, "sdpa" never; "auto" where it is the fastest exact kernel: on
    CUDA, for a mask or soft-capped scores (`masked`), without a KV cache (`cached`: generation
    builds a new block mask every token, which costs more than the masked work it skips).
    """
    if backend == "flex":
        return True
    return backend == "auto" and device.type == "cuda" and masked and not cached and available()


def block_mask(q_len: int, k_len: int, *, document_ids: torch.Tensor | None, window: int | None,
               device: torch.device) -> BlockMask:
    """Causal block mask of `q_len` queries (the last of `k_len` positions) over `k_len` keys.

    `document_ids` (B, T) restrict each query to keys of its own packed document; `window`
    to the last `window` keys, itself included. Built on `device` without reading any value back.
    """
    offset = k_len - q_len

    def mask_mod(b, h, q_idx, kv_idx):
        q_pos = q_idx + offset
        allowed = kv_idx <= q_pos
        if window is not None:
            allowed = allowed & (kv_idx > q_pos - window)
        if document_ids is not None:
            allowed = allowed & (document_ids[b, q_pos] == document_ids[b, kv_idx])
        return allowed

    batch = None if document_ids is None else document_ids.shape[0]
    return create_block_mask(mask_mod, batch, None, q_len, k_len, device=device)


def softcap_score_mod(cap: float) -> Callable:
    """The `score_mod` squashing each scaled score to (-cap, cap): cap * tanh(score / cap) (Gemma 2)."""

    def score_mod(score, b, h, q_idx, kv_idx):
        return torch.tanh(score / cap) * cap

    return score_mod


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: BlockMask, *, scale: float,
           score_mod: Callable | None = None) -> torch.Tensor:
    """Flex attention of q (B, H, T, D) over k, v (B, KV, K, D) with `mask`; returns (B, H, T, D)."""
    fn = flex_attention
    if q.device.type == "cuda" and not torch.compiler.is_compiling():
        fn = _compiled()
    return fn(q, k, v, score_mod=score_mod, block_mask=mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])


def is_block_mask(mask) -> bool:
    """Whether `mask` is a flex attention `BlockMask` (rather than a dense tensor or None)."""
    return BlockMask is not None and isinstance(mask, BlockMask)


def _compiled():
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = torch.compile(flex_attention)
    return _COMPILED
