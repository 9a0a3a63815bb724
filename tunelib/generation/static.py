"""The model run with fixed shapes for generation: a static KV cache, and the decode step compiled once.

gpt-fast's approach. Every layer's keys and values live in buffers of one fixed size,
(1, kv_heads, max_len, head_dim); a forward writes its tokens at the positions it is given (a
tensor) and attends over the whole buffer, with a mask that hides the slots after each query
(and those out of a sliding window). So the shapes of a one-token step never change with how
many tokens are stored, and torch.compile traces that step once for the whole answer, and for
the next answers while the cache size stays.

    run = StaticRun(model, max_len=512, compile=True)
    logits = run(ids, start=0)          # (vocab,) after the last of ids (1, T) written at 0..T-1
    logits = run(next_id, start=T)      # one more token: the compiled step

The forward here is the decoder's own, taken apart (embedding, rotary tables, the layers with
their attention inputs, final norm, head): only the positions and masks are made differently,
so every family, LLaMA-Adapter prompts and folded LoRA run as they do in `CausalLM.forward`.
"""

from __future__ import annotations

import torch

from tunelib.models.attention import AttentionInputs


class StaticCache:
    """Keys and values of up to `max_len` tokens in one fixed-size buffer per layer.

    The model's attention calls `update(layer, k, v)`: this writes k, v (1, KV, T, D) at
    `positions` (T,) and returns the whole buffers (1, KV, max_len, D). Slots never written, or
    written by an earlier, forgotten answer, are hidden by the mask `StaticRun` builds.
    """

    def __init__(self, config, max_len: int, *, dtype: torch.dtype, device: torch.device):
        shape = (1, config.num_key_value_heads, max_len, config.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.max_len = max_len
        self.positions: torch.Tensor | None = None  # (T,) where this forward's tokens go; set per forward
        if torch.device(device).type == "cuda":
            # A CUDA graph replays fixed addresses: the buffers it writes must never move.
            for buffer in self.keys + self.values:
                torch._dynamo.mark_static_address(buffer)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this forward's k, v (1, KV, T, D) at `positions`; return every slot's keys and values."""
        self.keys[layer].index_copy_(2, self.positions, k)
        self.values[layer].index_copy_(2, self.positions, v)
        return self.keys[layer], self.values[layer]


class StaticRun:
    """A `CausalLM` over a `StaticCache` of `max_len` tokens; one-token steps compiled if asked.

    `compile=True` compiles the one-token step with fullgraph=True and fixed shapes (the first
    step waits for the compile; later caches of the same size reuse it). Prompts of several
    tokens run eagerly: each has its own length, and runs once per answer.
    """

    def __init__(self, model, max_len: int, *, compile: bool = False):
        self.model = model
        config = model.config
        weight = model.model.embed_tokens.weight
        self.device = weight.device
        self.cache = StaticCache(config, max_len, dtype=weight.dtype, device=weight.device)
        self.slots = torch.arange(max_len, device=weight.device)  # (S,) slot i holds position i
        self.windows = {config.window(i) for i in range(config.num_hidden_layers)}
        # Rounded to the activations' dtype first, as Gemma was trained (bf16: 55.5); a plain
        # number, so the compiled step holds it as a constant.
        self.embed_scale = (torch.tensor(config.hidden_size ** 0.5).to(weight.dtype).item()
                            if config.embed_scale else None)
        self.step = _compiled(self._forward, weight.device) if compile else self._forward

    @property
    def max_len(self) -> int:
        return self.cache.max_len

    def __call__(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        """Logits (vocab,) float after the last of `ids` (1, T), whose tokens go at start..start+T-1.

        Raises:
            ValueError: the tokens would not fit in the cache.
        """
        length = ids.shape[1]
        if start + length > self.max_len:
            raise ValueError(f"the cache holds {self.max_len} tokens; this forward would need {start + length}")
        positions = torch.arange(start, start + length, device=ids.device)  # (T,)
        forward = self.step if length == 1 else self._forward
        return forward(ids, positions)

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        decoder = self.model.model
        h = decoder.embed_tokens(ids)  # (1, T, hidden)
        if self.embed_scale is not None:
            h = h * self.embed_scale
        cos, sin = decoder.rotary_emb(positions[None], h.dtype)  # (1, T, head_dim) each
        local = None  # Gemma 3's sliding layers rotate with their own base
        if decoder.config.rope_local_base_freq is not None:
            local = decoder.rotary_emb(positions[None], h.dtype, local=True)
        self.cache.positions = positions
        inputs = AttentionInputs(cos=cos, sin=sin, masks={w: self._mask(positions, w) for w in self.windows},
                                 cache=self.cache, local_rope=local)
        for layer in decoder.layers:
            h = layer(h, inputs)
        return self.model.logits(decoder.norm(h[0, -1])).float()  # only the last position's logits are read

    def _mask(self, positions: torch.Tensor, window: int | None) -> torch.Tensor:
        """(1, 1, T, S) bool: each query sees the slots at or before its position (within `window`)."""
        allowed = self.slots[None, :] <= positions[:, None]  # (T, S)
        if window is not None:
            allowed = allowed & (self.slots[None, :] > positions[:, None] - window)
        return allowed[None, None]


def _compiled(forward, device: torch.device):
    """`forward` under torch.compile: one graph (fullgraph), fixed shapes.

    On CUDA, mode="reduce-overhead" replays the step as a CUDA graph (the cache buffers are
    marked static for it in `StaticCache`).
    """
    mode = "reduce-overhead" if device.type == "cuda" else None
    return torch.compile(forward, fullgraph=True, dynamic=False, mode=mode)
