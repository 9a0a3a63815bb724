"""The decoder every family shares, with Hugging Face's module names.

    CausalLM
      model: Decoder
        embed_tokens          (vocab, hidden)
        layers.N: DecoderLayer
          input_layernorm, self_attn.{q,k,v,o}_proj [+ q_norm, k_norm], post_attention_layernorm,
          [pre_feedforward_layernorm, post_feedforward_layernorm], mlp.{gate,up,down}_proj
        norm
        rotary_emb            (no weights)
      lm_head                 (hidden -> vocab; the embedding itself when tied)

Because the names are HF's, a checkpoint key is a parameter name. Nothing here knows about
adapters, quantization or distribution: those are transformations applied to the built model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tunelib.models import flex
from tunelib.models.attention import Attention, AttentionInputs, KVCache, build_mask, document_lengths
from tunelib.models.config import DecoderConfig
from tunelib.models.moe import MoE
from tunelib.models.norm import RMSNorm
from tunelib.models.rope import RotaryEmbedding

_ACTIVATIONS = {"silu": F.silu, "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}


class MLP(nn.Module):
    """Gated feed-forward: down(act(gate(x)) * up(x)); SwiGLU with silu, GeGLU with gelu-tanh."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        c = config
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=c.mlp_bias)
        self.act = _ACTIVATIONS[c.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Attention then MLP, each in a residual branch with pre-norm (and post-norm for Gemma 2)."""

    def __init__(self, config: DecoderConfig, layer: int):
        super().__init__()
        c = config
        self.self_attn = Attention(c, layer)
        self.mlp = MoE(c) if c.is_moe_layer(layer) else MLP(c)  # MoE: see tunelib.models.moe
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps, c.norm_offset)
        # Without sandwich norms this is the MLP's pre-norm; HF keeps the name either way.
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps, c.norm_offset)
        self.sandwich = c.sandwich_norms
        if self.sandwich:
            self.pre_feedforward_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps, c.norm_offset)
            self.post_feedforward_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps, c.norm_offset)

    def forward(self, x: torch.Tensor, inputs: AttentionInputs) -> torch.Tensor:
        attn = self.self_attn(self.input_layernorm(x), inputs)
        if not self.sandwich:
            h = x + attn
            return h + self.mlp(self.post_attention_layernorm(h))
        h = x + self.post_attention_layernorm(attn)
        return h + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h)))


class Decoder(nn.Module):
    """Embedding, layers and final norm: token ids in, normed hidden states out.

    `attention_backend` ("auto", "sdpa" or "flex"; see tunelib.models.attention) is a plain
    attribute, not part of the config: it is how this machine runs attention, not what the
    model is. Training sets it from the setting of the same name, through
    `CausalLM.attention_backend`.
    """

    def __init__(self, config: DecoderConfig):
        super().__init__()
        c = self.config = config
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(c, i) for i in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps, c.norm_offset)
        self.rotary_emb = RotaryEmbedding(c)
        self.attention_backend = "auto"

    def forward(self, input_ids, position_ids=None, document_ids=None, cache=None) -> torch.Tensor:
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        if document_ids is not None and cache is not None:
            raise ValueError("document_ids cannot be combined with a KV cache")
        if position_ids is None:
            position_ids = default_positions(B, T, past, document_ids, input_ids.device)
        h = self.embed_tokens(input_ids)  # (B, T, hidden)
        if self.config.embed_scale:
            # The scale is rounded to the activations' dtype first, as Gemma was trained (bf16: 55.5).
            # A 0-d CPU tensor enters a GPU op as a plain number; made on the GPU it would be a
            # blocking host-to-device copy every forward.
            h = h * torch.tensor(self.config.hidden_size ** 0.5).to(h.dtype)
        cos, sin = self.rotary_emb(position_ids, h.dtype)
        local = None if self.config.rope_local_base_freq is None else self.rotary_emb(position_ids, h.dtype, local=True)
        masks, documents = self.attention_masks(T, cache, document_ids, h.device)
        inputs = AttentionInputs(cos, sin, masks, cache, documents, local)
        for layer in self.layers:
            h = layer(h, inputs)
        if cache is not None:
            cache.advance(T)
        return self.norm(h)

    def attention_masks(self, q_len: int, cache: KVCache | None, document_ids: torch.Tensor | None,
                        device: torch.device) -> tuple[dict, list[list[int]] | None]:
        """What `AttentionInputs` needs to mask `q_len` queries after the tokens in `cache`.

        Returns the mask of each sliding window (a dense bool tensor, a flex BlockMask, or None
        for plain causal; see `build_mask`, `flex.block_mask`) and the lengths of each row's
        packed documents where the per-document path applies (else None). Made once per forward.
        """
        k_len = (cache.length if cache is not None else 0) + q_len
        windows = {self.config.window(i) for i in range(len(self.layers))}
        masks = {}
        for w in windows:
            masked = (document_ids is not None or (w is not None and k_len > w)
                      or self.config.attn_logit_softcapping is not None)
            if flex.uses_flex(self.attention_backend, device, masked=masked, cached=cache is not None):
                masks[w] = flex.block_mask(q_len, k_len, document_ids=document_ids, window=w, device=device)
            else:
                masks[w] = build_mask(q_len, k_len, document_ids=document_ids, window=w, device=device)
        documents = None
        if (document_ids is not None and device.type == "cpu" and not torch.compiler.is_compiling()
                and not any(flex.is_block_mask(m) for m in masks.values())
                and all(w is None or w >= q_len for w in windows)):  # a window no shorter than T cuts no document
            documents = document_lengths(document_ids)
        return masks, documents


def default_positions(batch: int, length: int, past: int, document_ids, device) -> torch.Tensor:
    """Positions (B, T): past..past+T-1, or restarting at 0 where each packed document starts."""
    index = torch.arange(length, device=device).expand(batch, length)  # (B, T)
    if document_ids is None:
        return index + past
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    first = torch.where(starts, index, 0).cummax(dim=1).values  # (B, T) start of each token's document
    return index - first


class CausalLM(nn.Module):
    """A decoder with its language-model head. Build it with a family builder or `from_hf_config`."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        # The adapters a builder was asked for (an AdapterOptions), until tunelib.peft.apply_peft
        # adds them; None: none asked.
        self.adapter_options = None

    @property
    def attention_backend(self) -> str:
        """How attention runs: "auto", "sdpa" or "flex" (see tunelib.models.attention). Set it
        before torch.compile traces the layers; raises ValueError for another name."""
        return self.model.attention_backend

    @attention_backend.setter
    def attention_backend(self, backend: str) -> None:
        if backend not in flex.BACKENDS:
            raise ValueError(f"attention_backend={backend!r}; use one of {', '.join(flex.BACKENDS)}")
        self.model.attention_backend = backend

    def forward(self, input_ids: torch.Tensor, *, position_ids: torch.Tensor | None = None,
                document_ids: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        """Logits (B, T, vocab) for token ids (B, T).

        `position_ids` (B, T) default to 0..T-1 (after the cached tokens, or restarting per
        document). `document_ids` (B, T) marks packed documents: a token attends only to
        earlier tokens with the same id. `cache` (from `new_cache`) stores keys/values for
        generation and advances by T.
        """
        return self.logits(self.hidden(input_ids, position_ids=position_ids, document_ids=document_ids, cache=cache))

    def hidden(self, input_ids: torch.Tensor, *, position_ids: torch.Tensor | None = None,
               document_ids: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        """Final normed hidden states (B, T, hidden); same arguments as `forward`."""
        return self.model(input_ids, position_ids, document_ids, cache)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """lm_head (and Gemma 2's final soft-cap) on any slice of hidden states (..., hidden)."""
        out = self.lm_head(hidden)  # (..., vocab)
        cap = self.config.final_logit_softcapping
        return out if cap is None else torch.tanh(out / cap) * cap

    def new_cache(self, batch_size: int, max_len: int, *, dtype: torch.dtype | None = None,
                  device: torch.device | str | None = None) -> KVCache:
        """An empty KV cache for `batch_size` sequences of up to `max_len` tokens, on the model's device."""
        weight = self.model.embed_tokens.weight
        return KVCache(self.config, batch_size, max_len, dtype=dtype or weight.dtype, device=device or weight.device)
