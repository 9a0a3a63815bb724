"""Mixture-of-experts MLP: a softmax top-k router and experts stored as stacked weights.

    mlp: MoE
      gate                     router, nn.Linear (hidden -> num_experts), no bias
      experts: Experts
        gate_proj, up_proj     GroupedLinear, weight (E, moe_intermediate, hidden)
        down_proj              GroupedLinear, weight (E, hidden, moe_intermediate)

Routing is dropless (no capacity: every token reaches its k experts). The k chosen tokens
copies are sorted by expert, so each expert multiplies one contiguous block of rows: with
`torch._grouped_mm` on CUDA (one kernel for all experts), elsewhere with a loop over the
experts' blocks. A checkpoint stores each expert's projections apart (`experts.E.gate_proj`);
the family's HF format stacks them on load and splits them on save (`expert_keys`).

Each MoE layer keeps its last router logits, so that after a forward
`router_aux_loss(model)` gives the Switch-Transformer load-balancing loss of that forward, as
transformers' `load_balancing_loss_func` computes it. The objective adds it times
`model.config.router_aux_loss_coef`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tunelib.models.config import DecoderConfig

_ACTIVATIONS = {"silu": F.silu, "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}


@dataclass
class Groups:
    """How rows sorted by expert split into experts: `counts` (E,) rows each, `offsets` (E,) their
    cumulative ends as int32 (what `torch._grouped_mm` takes)."""

    counts: torch.Tensor
    offsets: torch.Tensor
    _sizes: list[int] | None = None  # counts as Python ints, read once per MoE forward

    @classmethod
    def of(cls, expert_per_row: torch.Tensor, num_experts: int) -> Groups:
        """Groups of rows already sorted by `expert_per_row` (R,)."""
        # Rows before expert e + 1 = the end of e's block; no host sync, and it runs on meta.
        ends = torch.searchsorted(expert_per_row, torch.arange(1, num_experts + 1, device=expert_per_row.device))
        return cls(torch.diff(ends, prepend=ends.new_zeros(1)), ends.to(torch.int32))

    def sizes(self, rows: int) -> list[int]:
        """Rows per expert as Python ints (one host sync; the loop path needs them). On the meta
        device, which has no values, `rows` spread evenly (what a memory estimate assumes)."""
        if self.counts.is_meta:
            experts = self.counts.shape[0]
            return [rows // experts + (e < rows % experts) for e in range(experts)]
        if self._sizes is None:  # every projection of the layer (and its adapters) splits alike
            self._sizes = self.counts.tolist()
        return self._sizes


def uses_grouped_mm(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `grouped_mm` runs as one `torch._grouped_mm` kernel: on CUDA, in bf16, with
    rows of a multiple of 16 bytes (the kernel's alignment). Elsewhere it loops over experts."""
    return (x.is_cuda and hasattr(torch, "_grouped_mm") and x.dtype == weight.dtype == torch.bfloat16
            and weight.shape[-1] % 8 == 0 and weight.shape[-2] % 8 == 0)


def grouped_mm(x: torch.Tensor, weight: torch.Tensor, groups: Groups) -> torch.Tensor:
    """Row block e of `x` (R, in) times `weight[e]` (out, in) transposed, for every expert: (R, out)."""
    if uses_grouped_mm(x, weight):
        return torch._grouped_mm(x, weight.transpose(-2, -1), offs=groups.offsets)
    blocks = torch.split(x, groups.sizes(x.shape[0]))
    return torch.cat([block @ w.t() for block, w in zip(blocks, weight.unbind(0))])


class GroupedLinear(nn.Module):
    """One bias-free linear map per expert, applied to rows sorted by expert.

    Parameter: `weight (num_experts, out_features, in_features)`. The module has the leaf
    name of the projection it stacks (`gate_proj`, ...), so adapter targets find it.
    """

    def __init__(self, num_experts: int, in_features: int, out_features: int):
        super().__init__()
        self.num_experts, self.in_features, self.out_features = num_experts, in_features, out_features
        self.weight = nn.Parameter(torch.empty(num_experts, out_features, in_features))

    def forward(self, x: torch.Tensor, groups: Groups) -> torch.Tensor:
        return grouped_mm(x, self.weight, groups)

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, in_features={self.in_features}, out_features={self.out_features}"


class Experts(nn.Module):
    """The gated MLP of every expert: down(act(gate(x)) * up(x)), on rows sorted by expert."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        c = config
        E, H, I = c.num_experts, c.hidden_size, c.moe_intermediate_size
        self.gate_proj = GroupedLinear(E, H, I)
        self.up_proj = GroupedLinear(E, H, I)
        self.down_proj = GroupedLinear(E, I, H)
        self.act = _ACTIVATIONS[c.hidden_act]

    def forward(self, x: torch.Tensor, groups: Groups) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x, groups)) * self.up_proj(x, groups), groups)


class MoE(nn.Module):
    """Router plus experts, in place of a dense MLP: (B, T, hidden) -> (B, T, hidden)."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        c = config
        self.num_experts, self.top_k, self.norm_topk_prob = c.num_experts, c.num_experts_per_tok, c.norm_topk_prob
        self.gate = nn.Linear(c.hidden_size, c.num_experts, bias=False)
        self.experts = Experts(c)
        # The last forward's router logits (tokens, E), read by router_aux_loss; not a weight.
        self.router_logits: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])  # (N, hidden)
        logits = self.gate(flat)  # (N, E)
        self.router_logits = logits
        weights, chosen = route(logits, self.top_k, self.norm_topk_prob)  # (N, k) fp32, (N, k)
        # Sort the N*k (token, expert) pairs by expert; a stable sort keeps token order inside each.
        order = chosen.reshape(-1).argsort(stable=True)  # (N*k,)
        token = order // self.top_k  # (N*k,) the token of each sorted pair
        groups = Groups.of(chosen.reshape(-1)[order], self.num_experts)
        out = self.experts(flat[token], groups)  # (N*k, hidden)
        out = (out * weights.reshape(-1)[order, None]).to(x.dtype)
        return torch.zeros_like(flat).index_add_(0, token, out).view_as(x)


def route(logits: torch.Tensor, top_k: int, normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights (N, k) in fp32, experts (N, k)): softmax over experts, the k largest, optionally
    rescaled to sum to 1."""
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    weights, chosen = torch.topk(probs, top_k, dim=-1)
    if normalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, chosen


def moe_layers(model: nn.Module) -> list[MoE]:
    """The MoE blocks of `model`, in layer order."""
    return [m for m in model.modules() if isinstance(m, MoE)]


def router_aux_loss(model: nn.Module, mask: torch.Tensor | None = None) -> torch.Tensor | None:
    """The load-balancing loss of `model`'s last forward over all its MoE layers, or None when dense.

    Switch Transformer's loss as transformers computes it: E · Σ_e f_e · P_e, where f_e is the
    share of (token, choice) pairs sent to expert e (each token counts k times, so Σ f_e = k)
    and P_e the mean router probability of e, both over every token of every MoE layer. It is
    the loss before `config.router_aux_loss_coef`. `mask` (B, T), when given, leaves padding
    tokens out (transformers' attention_mask). Returns an fp32 scalar that carries gradients
    to the routers.

    Raises:
        RuntimeError: the model has MoE layers but no forward has run since it was built.
    """
    layers = moe_layers(model)
    if not layers:
        return None
    if any(layer.router_logits is None for layer in layers):
        raise RuntimeError("router_aux_loss needs a forward first: no router logits are recorded yet")
    num_experts, top_k = layers[0].num_experts, layers[0].top_k
    weight = None if mask is None else mask.reshape(-1, 1).float()  # (N, 1)
    counts = probs_sum = 0
    rows = 0
    for layer in layers:
        probs = torch.softmax(layer.router_logits.float(), dim=-1)  # (N, E)
        chosen = torch.topk(probs, top_k, dim=-1).indices  # (N, k)
        hits = F.one_hot(chosen, num_experts).sum(dim=1).float()  # (N, E)
        if weight is not None:
            hits, probs = hits * weight, probs * weight
        counts = counts + hits.sum(dim=0)
        probs_sum = probs_sum + probs.sum(dim=0)
        rows = rows + (probs.shape[0] if weight is None else weight.sum())
    return num_experts * torch.sum((counts / rows) * (probs_sum / rows))


# ---------------------------------------------------------------- checkpoint keys

_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ExpertKeys:
    """How a checkpoint names each expert's weights, e.g. Mixtral's
    `model.layers.N.block_sparse_moe.experts.E.w1.weight` for our
    `model.layers.N.mlp.experts.gate_proj.weight[E]`.

    `block` is the checkpoint's name of the MoE module (our `mlp`), `names` its names of
    gate_proj, up_proj and down_proj.
    """

    block: str = "mlp"
    names: tuple[str, str, str] = _PROJECTIONS

    def _pattern(self) -> re.Pattern:
        names = "|".join(map(re.escape, self.names))
        return re.compile(rf"^(.*\.){re.escape(self.block)}\.experts\.(\d+)\.({names})\.weight$")

    def stacked(self, key: str) -> tuple[str, int] | None:
        """(our stacked parameter, expert index) of a per-expert checkpoint key, else None."""
        match = self._pattern().match(key)
        if match is None:
            return None
        ours = _PROJECTIONS[self.names.index(match[3])]
        return f"{match[1]}mlp.experts.{ours}.weight", int(match[2])

    def theirs(self, ours: str) -> str:
        """Our name of a router or expert module or weight -> the checkpoint's block name
        (`...mlp.gate.weight` -> `...block_sparse_moe.gate.weight`); others unchanged."""
        return re.sub(r"\.mlp\.(gate|experts)\b", rf".{self.block}.\1", ours)

    def ours(self, theirs: str) -> str:
        """The checkpoint's name -> ours (`...block_sparse_moe.gate.weight` -> `...mlp.gate.weight`)."""
        return re.sub(rf"\.{re.escape(self.block)}\.", ".mlp.", theirs)

    def split(self, name: str, tensor: torch.Tensor, config: DecoderConfig) -> list[tuple[str, torch.Tensor]]:
        """A checkpoint key that is not per-expert -> our name (the router may be renamed)."""
        return [(self.ours(name), tensor)]

    def fuse(self, state_dict: dict[str, torch.Tensor], config: DecoderConfig) -> dict[str, torch.Tensor]:
        """Our state dict -> checkpoint keys: every stacked expert weight split into one per expert."""
        out = {}
        for name, tensor in state_dict.items():
            match = _STACKED.match(name)
            if match is None:
                out[self.theirs(name)] = tensor
                continue
            theirs = self.names[_PROJECTIONS.index(match[2])]
            # (E·out, in) when it comes from an NF4 weight (see tunelib.quantization.nf4.quantize).
            for e, expert in enumerate(tensor.reshape(config.num_experts, -1, tensor.shape[-1]).unbind(0)):
                out[f"{match[1]}{self.block}.experts.{e}.{theirs}.weight"] = expert
        return out


_STACKED = re.compile(r"^(.*\.)mlp\.experts\.(gate_proj|up_proj|down_proj)\.weight$")


def expert_key_mapping(keys: ExpertKeys) -> dict[str, Callable]:
    """The HFFormat fields of a MoE family: `split`, `fuse` and `stacked` for these key names,
    and `expert_keys` itself (PEFT folders name adapters per expert too)."""
    return {"split": keys.split, "fuse": keys.fuse, "stacked": keys.stacked, "expert_keys": keys}
