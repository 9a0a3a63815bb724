"""Grouped-query self-attention, its masks, and the key/value cache used for generation.

Which kernel runs is the decoder's `attention_backend` (the training setting of that name puts
it there; "auto" unless set):

- "auto": plain causal attention goes through `F.scaled_dot_product_attention` with
  `is_causal=True`, so the flash/efficient kernels stay available. Packed documents, sliding
  windows shorter than the keys, and Gemma 2's soft-capping go through flex attention
  (`tunelib.models.flex`) on CUDA where torch has it: a block mask built once per forward and
  a score_mod, and the kernel skips every fully masked block. Elsewhere they take the "sdpa"
  paths below. With a KV cache (generation) "auto" stays with SDPA.
- "sdpa": packed documents and sliding windows become a dense boolean mask for SDPA, and
  soft-capping is computed explicitly on the scores (every masked score is still computed).
- "flex": every layer goes through flex attention, plain causal ones too.

On CPU ("auto" and "sdpa"), packed documents are attended one document at a time instead
(`AttentionInputs.documents`): a kernel given a mask still computes every score the mask throws
away, which for packs of short documents is most of them. Each document attending causally to
itself is exactly what the document mask allows, so only the skipped work differs. (Reading the
document lengths would stall a GPU's host on the device, and under torch.compile each new
packing would be traced again, so compiled layers keep the mask.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tunelib.models import flex
from tunelib.models.config import DecoderConfig
from tunelib.models.norm import RMSNorm
from tunelib.models.rope import rotate


class KVCache:
    """Keys and values of the tokens seen so far, preallocated for `max_len` tokens.

    `CausalLM.forward(ids, cache=cache)` appends the new tokens and advances `length`; the
    next call then sees them. Use `CausalLM.new_cache(...)` to make one.
    """

    def __init__(self, config: DecoderConfig, batch_size: int, max_len: int, *, dtype: torch.dtype,
                 device: torch.device | str | None = None):
        shape = (batch_size, config.num_key_value_heads, max_len, config.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.max_len = max_len
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's k, v (B, kv_heads, T, head_dim) for `layer`; return all keys and values so far."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} tokens; this step would need {end}")
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, steps: int) -> None:
        """Mark `steps` more tokens as stored (the model calls this after its last layer)."""
        self.length += steps

    def reset(self) -> None:
        """Forget every stored token."""
        self.length = 0


@dataclass
class AttentionInputs:
    """What every layer's attention needs besides its input; computed once per forward."""

    cos: torch.Tensor  # (B, T, head_dim)
    sin: torch.Tensor  # (B, T, head_dim)
    # window -> (B|1, 1, T, K) bool, a flex BlockMask, or None: plain causal
    masks: dict[int | None, torch.Tensor | flex.BlockMask | None]
    cache: KVCache | None = None
    # Per row, the lengths of its packed documents in order (summing to T): attend to each alone.
    # Set only where that equals every layer's mask (see `document_lengths`).
    documents: list[list[int]] | None = None
    # cos, sin (B, T, head_dim) of the sliding layers' own RoPE base (Gemma 3); None: no such layers.
    local_rope: tuple[torch.Tensor, torch.Tensor] | None = None


def build_mask(q_len: int, k_len: int, *, document_ids: torch.Tensor | None, window: int | None,
               device: torch.device) -> torch.Tensor | None:
    """Boolean mask (B|1, 1, q_len, k_len) of the keys each query may see, True = attend.

    Queries are the last `q_len` of `k_len` positions. Returns None when causal attention
    alone is exact: then SDPA's `is_causal` (or no mask for a single query) is used instead.
    """
    window_matters = window is not None and k_len > window
    if document_ids is None and not window_matters and q_len in (k_len, 1):
        return None
    q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]  # (T, 1)
    k_pos = torch.arange(k_len, device=device)[None, :]  # (1, K)
    allowed = k_pos <= q_pos  # (T, K)
    if window_matters:
        allowed = allowed & (k_pos > q_pos - window)
    allowed = allowed[None, None]  # (1, 1, T, K)
    if document_ids is not None:  # packed documents: only the same document, never across
        same = document_ids[:, -q_len:, None] == document_ids[:, None, :]  # (B, T, K)
        allowed = allowed & same[:, None]
    return allowed


def document_lengths(document_ids: torch.Tensor) -> list[list[int]] | None:
    """Per row of `document_ids` (B, T), the lengths of its documents in order; None if some
    document's tokens are not all in one run (then only the mask says who sees whom). Syncs
    with the device: for CPU tensors."""
    lengths = []
    for row in document_ids:
        ids, counts = torch.unique_consecutive(row, return_counts=True)
        if ids.unique().numel() != ids.numel():
            return None
        lengths.append(counts.tolist())
    return lengths


def softcapped_attention(q, k, v, mask, *, scale: float, softcap: float, causal: bool = True) -> torch.Tensor:
    """Attention with scores squashed to (-softcap, softcap) before the softmax (Gemma 2).

    q (B, H, T, D), k and v (B, KV, K, D), mask (B|1, 1, T, K) bool, or None: causal (every
    key visible when `causal` is False).
    """
    B, H, T, D = q.shape
    kv_heads, K = k.shape[1], k.shape[2]
    if mask is None and causal:
        mask = torch.ones(T, K, dtype=torch.bool, device=q.device).tril(K - T)[None, None]
    q = q.view(B, kv_heads, H // kv_heads, T, D)  # (B, KV, group, T, D): no copy of k, v per head
    scores = q @ k.unsqueeze(2).transpose(-1, -2) * scale  # (B, KV, group, T, K)
    scores = torch.tanh(scores / softcap) * softcap
    if mask is not None:
        scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return (probs @ v.unsqueeze(2)).view(B, H, T, D)


class Attention(nn.Module):
    """Multi-head attention with grouped key/value heads, RoPE, optional q/k norms and biases."""

    def __init__(self, config: DecoderConfig, layer: int):
        super().__init__()
        c = config
        self.layer, self.head_dim = layer, c.head_dim
        self.q_proj = nn.Linear(c.hidden_size, c.num_attention_heads * c.head_dim, bias=c.qkv_bias)
        self.k_proj = nn.Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, bias=c.qkv_bias)
        self.v_proj = nn.Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, bias=c.qkv_bias)
        self.o_proj = nn.Linear(c.num_attention_heads * c.head_dim, c.hidden_size, bias=c.o_bias)
        if c.qk_norm:  # Gemma 3 stores these as offsets from 1 too, like its other norms
            self.q_norm = RMSNorm(c.head_dim, c.rms_norm_eps, c.norm_offset)
            self.k_norm = RMSNorm(c.head_dim, c.rms_norm_eps, c.norm_offset)
        self.qk_norm = c.qk_norm
        self.scale = (c.query_pre_attn_scalar or c.head_dim) ** -0.5
        self.softcap = c.attn_logit_softcapping
        self.score_mod = None if self.softcap is None else flex.softcap_score_mod(self.softcap)  # for flex
        self.window = c.window(layer)
        self.local_rope = c.local_rope(layer)

    def forward(self, x: torch.Tensor, inputs: AttentionInputs) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, -1, self.head_dim)  # (B, T, H, D)
        k = self.k_proj(x).view(B, T, -1, self.head_dim)  # (B, T, KV, D)
        v = self.v_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, KV, T, D)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = self.rope(inputs)
        q = rotate(q.transpose(1, 2), cos, sin)  # (B, H, T, D)
        k = rotate(k.transpose(1, 2), cos, sin)  # (B, KV, T, D)
        if inputs.cache is not None:
            k, v = inputs.cache.update(self.layer, k, v)  # (B, KV, K, D), K = cached + T
        # A compiled layer keeps the mask: one graph for every packing, where the per-document
        # loop would be traced again for each new set of document lengths.
        if not torch.compiler.is_compiling() and inputs.documents is not None:
            out = self.attend_documents(q, k, v, inputs.documents)  # (B, H, T, D)
        else:
            out = self.attend(q, k, v, inputs.masks[self.window])  # (B, H, T, D)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))  # (B, T, hidden)

    def rope(self, inputs: AttentionInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's cos, sin (B, T, head_dim): the sliding layers' own ones where the model has them."""
        if not self.local_rope:
            return inputs.cos, inputs.sin
        if inputs.local_rope is None:  # a caller that built AttentionInputs itself and forgot them
            raise ValueError(f"layer {self.layer} rotates with rope_local_base_freq, but AttentionInputs.local_rope "
                             "is None; compute it with rotary_emb(positions, dtype, local=True)")
        return inputs.local_rope

    def attend_documents(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         documents: list[list[int]]) -> torch.Tensor:
        """`attend` on each packed document alone, causally: q (B, H, T, D), k and v (B, KV, T, D),
        `documents[b]` the lengths of row b's documents. Returns (B, H, T, D)."""
        rows = []
        for lengths, qb, kb, vb in zip(documents, q, k, v):  # (H, T, D), (KV, T, D), (KV, T, D)
            # split/unbind rather than slicing: their backward is one cat/stack, not a zero-filled
            # gradient of the whole tensor per document.
            parts = [self.attend(qd[None], kd[None], vd[None], None)  # (1, H, t, D)
                     for qd, kd, vd in zip(qb.split(lengths, 1), kb.split(lengths, 1), vb.split(lengths, 1))]
            rows.append(torch.cat(parts, dim=2))
        return torch.cat(rows)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, *,
               causal: bool = True) -> torch.Tensor:
        """This layer's scaled (and soft-capped) attention of rotated queries over keys and values.

        q (B, H, T, D); k, v (B, KV, K, D); mask (B|1, 1, T, K) bool, True = attend, a flex
        `BlockMask` (then flex attention runs), or None: the T queries are the last T of K
        positions and attend causally (with `causal=False`, every query sees every key).
        Returns (B, H, T, D), before o_proj.

        `forward` calls it once per layer; a subclass may override it to attend to more keys
        with the same queries, scale and soft-cap.
        """
        if flex.is_block_mask(mask):
            return flex.attend(q, k, v, mask, scale=self.scale, score_mod=self.score_mod)
        if self.softcap is not None:
            return softcapped_attention(q, k, v, mask, scale=self.scale, softcap=self.softcap, causal=causal)
        # A single query sees every key anyway. Decided by an `if`: under torch.compile a length
        # that varies between batches is symbolic, a comparison of it too, and SDPA takes only a
        # plain bool; branching on it makes a guard instead.
        is_causal = False
        if causal and mask is None and q.shape[2] > 1:
            is_causal = True
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=self.scale,
                                              enable_gqa=q.shape[1] != k.shape[1])
