"""The numbers that define a decoder, named as in Hugging Face's `config.json`.

One dataclass serves every family: a family module fills it from its table of sizes or from
a checkpoint's `config.json` (see `hf_format.py`), and the decoder reads nothing else.
Field names are HF's wherever HF has one, so a mismatch message reads like the file.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

FULL, SLIDING = "full_attention", "sliding_attention"
ACTIVATIONS = ("silu", "gelu_pytorch_tanh")
ROPE_TYPES = ("linear", "llama3")  # plus None: unscaled
_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
          "num_key_value_heads", "head_dim", "sliding_window")
_MAY_BE_NONE = ("num_key_value_heads", "head_dim", "sliding_window")


@dataclass(frozen=True)
class DecoderConfig:
    """Architecture of one decoder-only model; every field changes the forward pass."""

    architecture: str  # HF class name, e.g. "LlamaForCausalLM"; picks the HF format on save
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int | None = None  # None: same as num_attention_heads (no GQA)
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # {"rope_type": "llama3", "factor": 8.0, ...}
    max_position_embeddings: int = 4096  # context length; informative, not a shape
    tie_word_embeddings: bool = False  # lm_head shares embed_tokens' weight
    hidden_act: str = "silu"  # gate activation: "silu" (SwiGLU) or "gelu_pytorch_tanh" (GeGLU)
    qkv_bias: bool = False  # q/k/v projections have a bias (Qwen2)
    o_bias: bool = False  # o_proj has a bias (Llama's attention_bias sets both)
    mlp_bias: bool = False
    qk_norm: bool = False  # RMSNorm over each head of q and k before RoPE (Qwen3)
    norm_offset: float = 0.0  # RMSNorm scales by (offset + w): Gemma stores w around 0, offset 1
    embed_scale: bool = False  # multiply embeddings by sqrt(hidden_size) (Gemma)
    sandwich_norms: bool = False  # norms before and after attention and MLP (Gemma 2)
    query_pre_attn_scalar: float | None = None  # attention scale is this ** -0.5 (Gemma 2)
    attn_logit_softcapping: float | None = None  # scores -> cap * tanh(scores / cap)
    final_logit_softcapping: float | None = None  # logits -> cap * tanh(logits / cap)
    sliding_window: int | None = None  # a query sees the last `sliding_window` keys, itself included
    layer_types: tuple[str, ...] | None = None  # per layer FULL or SLIDING; None: all use sliding_window
    # Sliding-window layers rotate with this RoPE base and no rope_scaling; full layers keep
    # rope_theta and rope_scaling (Gemma 3: 10000 local, 1e6 global). None: one RoPE for all.
    rope_local_base_freq: float | None = None
    # Mixture of experts (see tunelib.models.moe); num_experts None: every MLP is dense.
    num_experts: int | None = None  # experts per MoE layer (HF: num_experts, Mixtral's num_local_experts)
    num_experts_per_tok: int = 2  # top-k: experts each token is sent to
    moe_intermediate_size: int | None = None  # each expert's hidden size; None: intermediate_size
    norm_topk_prob: bool = True  # rescale the k chosen probabilities to sum to 1 (Mixtral does; Qwen3-MoE says)
    mlp_only_layers: tuple[int, ...] = ()  # layers that keep a dense MLP (sizes from intermediate_size)
    decoder_sparse_step: int = 1  # layer i is MoE when (i + 1) % step == 0 and i is not in mlp_only_layers
    router_aux_loss_coef: float = 0.001  # weight of the load-balancing loss in the objective (not the forward)

    def __post_init__(self):
        self._check_sizes()  # first: the derived defaults below compute with them
        put = object.__setattr__  # frozen: derived defaults are filled in once, here
        if self.num_key_value_heads is None:
            put(self, "num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None:
            put(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if self.layer_types is not None:
            put(self, "layer_types", tuple(self.layer_types))
        put(self, "mlp_only_layers", tuple(self.mlp_only_layers))
        if self.num_experts is not None and self.moe_intermediate_size is None:
            put(self, "moe_intermediate_size", self.intermediate_size)
        # One spelling per behaviour, so that two configs that compute the same thing compare equal.
        if self.sliding_window is None or self.layer_types is None or set(self.layer_types) == {SLIDING}:
            put(self, "layer_types", None)
        elif set(self.layer_types) == {FULL}:
            put(self, "layer_types", None)
            put(self, "sliding_window", None)
        self._check()

    def _check_sizes(self):
        # A config.json may hold "64" or null where a size belongs; the layers would fail on it
        # far from the file.
        for name in _SIZES:
            value = getattr(self, name)
            if value is None and name in _MAY_BE_NONE:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} is {value!r}; it must be a whole number of 1 or more")
        if isinstance(self.rms_norm_eps, bool) or not isinstance(self.rms_norm_eps, (int, float)):
            raise ValueError(f"rms_norm_eps is {self.rms_norm_eps!r}; it must be a number")

    def _check(self):
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads {self.num_key_value_heads}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported (supported: {', '.join(ACTIVATIONS)})")
        rope_type = (self.rope_scaling or {}).get("rope_type")
        if self.rope_scaling is not None and rope_type not in ROPE_TYPES:
            raise ValueError(f"rope_type {rope_type!r} is not supported (supported: default, {', '.join(ROPE_TYPES)})")
        if self.num_experts is not None:
            self._check_experts()
        if self.layer_types is not None:
            if len(self.layer_types) != self.num_hidden_layers or not set(self.layer_types) <= {FULL, SLIDING}:
                raise ValueError(f"layer_types must list {FULL!r} or {SLIDING!r} for each of the "
                                 f"{self.num_hidden_layers} layers, got {self.layer_types}")

    def _check_experts(self):
        for name in ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "decoder_sparse_step"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} is {value!r}; it must be a whole number of 1 or more")
        if self.num_experts_per_tok > self.num_experts:
            raise ValueError(f"num_experts_per_tok {self.num_experts_per_tok} is more than num_experts {self.num_experts}")

    def is_moe_layer(self, layer: int) -> bool:
        """Whether layer `layer` (from 0) has a mixture-of-experts MLP rather than a dense one."""
        return (self.num_experts is not None and layer not in self.mlp_only_layers
                and (layer + 1) % self.decoder_sparse_step == 0)

    def local_rope(self, layer: int) -> bool:
        """Whether layer `layer` rotates with `rope_local_base_freq` (a sliding layer of Gemma 3)."""
        return self.rope_local_base_freq is not None and self.window(layer) is not None

    def window(self, layer: int) -> int | None:
        """The sliding window of layer `layer`, or None when it attends to every earlier token."""
        if self.layer_types is not None and self.layer_types[layer] == FULL:
            return None
        return self.sliding_window

    def differences(self, other: DecoderConfig) -> list[str]:
        """'field ours vs theirs' for every field that changes the computation (context length does not)."""
        return [f"{f.name} {getattr(self, f.name)} vs {getattr(other, f.name)}" for f in fields(self)
                if f.name != "max_position_embeddings" and getattr(self, f.name) != getattr(other, f.name)]


def alternating_layers(num_layers: int) -> tuple[str, ...]:
    """Gemma 2's pattern: even layers slide, odd layers see everything."""
    return tuple(SLIDING if i % 2 == 0 else FULL for i in range(num_layers))
