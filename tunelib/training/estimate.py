"""Peak memory per device and time per step of a fine-tuning run, before anything is loaded.

`estimate(cfg, model, method, world_size=..., device=...)` works on the checked config and the
model as setup builds it, on the meta device with its adapters; no weight is read. The peak is
the sum of:

- **baseline**: what the process holds before loading. On a CPU, this process's resident
  memory now, with the libraries the run imports later imported first (`datasets`; Inductor
  and torchao's optimizers when the step is compiled), so it is measured, not guessed; on
  CUDA, what PyTorch's allocator already holds (the CUDA context lies outside
  `max_memory_reserved`).
- **weights**: every frozen weight in the dtype it is stored in (`dtype`, or fp32 under
  weight_precision=fp32_master), 0.516 bytes per weight for NF4 (QLoRA's decoder linears:
  4 bits, an int8 scale per 64 and an fp32 factor per 256 scales); trained weights
  (adapters in `adapter_dtype`; every weight for full fine-tuning) as **trained weights**.
- **gradients**: one per trained weight in its dtype; under optimizer_in_bwd only the largest
  is alive at once. Counted together with the activations, as under gradient accumulation,
  so without accumulation the estimate leans high by at most the smaller of the two.
- **optimizer states**: by optimizer kind (`OPTIMIZER_STATE_BYTES`), plus the step's scratch
  (one temporary the size of the largest trained tensor).
- **activations**: what autograd keeps for backward, found by running the meta model's
  forward for `batch_size` rows of the sequence length under saved-tensor hooks, so every
  adapter and family counts exactly what it keeps. Attention is counted as the fused kernels
  of CPU and CUDA keep it (q, k, v, output, log-sum-exp): on the meta device torch's SDPA would
  fall back to a path that keeps the T x T scores. With activation checkpointing a
  checkpointed layer keeps only its input, and backward recomputes one layer at a time. Plus
  backward's working memory: the gradients flowing through a layer, about what it keeps.
- **loss**: LinearCrossEntropyLoss's buffers: the gradient of the hidden states (and of the
  output layer, when it trains) made in forward, and one chunk of fp32 logits.
- **frozen models** an objective holds (a distillation teacher, full DPO's reference copy):
  their weights as stored, and their forward's output on the batch (hidden states and one chunk
  of fp32 logits). A preference pair is two sequences: activations and loss chunks count both.
- **FSDP**: over N devices weights, trained weights, gradients, optimizer states and frozen
  models divide by N; each device also holds two gathered decoder layers (the one running and the one
  prefetched) and the gathered output layer while the loss runs. Gradients stay whole and
  fp32 between micro-batches with fsdp_gradient_sync=last_micro_batch.

Time per step is model FLOPs (6·N per trained token for full fine-tuning, 4·N for adapters,
plus 12·L·T·d_attn for attention; the forward once more with activation checkpointing; 2·N
per token for each forward without gradients: a teacher's, a reference's) over
the device's peak at an assumed utilisation: on CUDA bf16 peaks by device name
(`GPU_BF16_PEAK`) at `GPU_MFU`; on a CPU this machine's measured fp32 matmul rate at
`CPU_MATMUL_SHARE` of it. Measured against real runs in docs/performance.md.
"""

from __future__ import annotations

import copy
import importlib
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from tunelib.models.moe import GroupedLinear, MoE
from tunelib.peft import adapter_params, apply_peft, is_adapter_key, llama_adapter_spec
from tunelib.quantization import nf4_transform
from tunelib.training.objective_setup import REFERENCE, Cost, cost, meta_model
from tunelib.training.precision import adapter_dtype, stored_dtype
from tunelib.training.runtime import DTYPES, resolve_device

GIB = 1024**3
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit codes + int8 scale per 64 + fp32 factor per 256 scales
# Optimizer state bytes per trained weight: None means "2 x the weight's own bytes" (Adam's two
# moments in the weight's dtype); torchao's low-bit states add a 4-byte scale per block.
OPTIMIZER_STATE_BYTES = {
    "AdamW": None, "Adam": None,
    "AdamW8bit": 2 + 8 / 256, "Adam8bit": 2 + 8 / 256,
    "AdamW4bit": 1 + 8 / 128, "Adam4bit": 1 + 8 / 128,
    "AdamWFp8": 2 + 8 / 256, "AdamFp8": 2 + 8 / 256,
}
# Dense bf16 peak FLOP/s by a substring of torch.cuda.get_device_name (vendor data sheets).
GPU_BF16_PEAK = {"B200": 2250e12, "H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}
GPU_MFU = 0.40  # what a well-tuned LoRA/full step reaches on H100-class GPUs
CPU_MATMUL_SHARE = 0.5  # of the measured n x n matmul rate: smaller matmuls, norms and softmax run slower
DEFAULT_SEQ_LEN = 2048  # assumed when tokenizer.max_seq_len is null (rows then set the length)


@dataclass
class Plan:
    """The settings the estimate depends on, so an alternative is one `replace` away."""

    batch_size: int
    seq_len: int
    checkpoint_every: int | None  # None: no activation checkpointing; k: every k-th layer
    world_size: int
    quantized: frozenset[str]  # NF4 weight names
    accumulation: int
    gradient_sync: str
    adapters: bool  # what trains is adapters (kept in adapter_dtype), not the model's weights
    sequences: int = 1  # sequences per row of batch_size (a preference pair: 2)


@dataclass
class Estimate:
    """Bytes per part of one device's peak, in order, and what the device has.

    `parts` maps a part's name to its bytes; `total` is their sum. `capacity` is the memory the
    device offers (CUDA: free now; CPU: MemAvailable plus what this process already holds), or
    None when unknown. `step_seconds` is None when not estimated (`time_note` says why).
    """

    parts: dict[str, int]
    device: str
    capacity: int | None
    plan: Plan
    step_seconds: float | None = None
    time_note: str = ""
    notes: list[str] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def fits(self) -> bool | None:
        """Whether the peak fits the device's capacity; None when the capacity is unknown."""
        return None if self.capacity is None else self.total <= self.capacity

    def one_line(self) -> str:
        """`Estimated peak memory: X GiB per device (of Y GiB ...)` with a warning when it will not fit."""
        per = f" per device over {self.plan.world_size}" if self.plan.world_size > 1 else ""
        line = f"Estimated peak memory: {self.total / GIB:.2f} GiB{per} on {self.device}"
        if self.capacity is not None:
            line += f" (of {self.capacity / GIB:.2f} GiB available)"
        if self.fits is False:
            line += "; warning: it will not fit (`tune estimate` says what to change)"
        return line

    def lines(self) -> list[str]:
        """The breakdown, the total, the time per step, whether it fits and what to change."""
        width = max(len(name) for name in self.parts)
        out = [f"  {name:<{width}}  {size / GIB:8.3f} GiB" for name, size in self.parts.items()]
        out += [f"  {'total':<{width}}  {self.total / GIB:8.3f} GiB", "", self.one_line()]
        out.append(f"Time per step: {_seconds(self.step_seconds)}" if self.step_seconds else
                   f"Time per step: not estimated ({self.time_note})")
        out += [f"Note: {note}" for note in self.notes]
        if self.advice:
            out += ["To fit, change one of:", *(f"  {line}" for line in self.advice)]
        return out


def estimate(cfg, model: nn.Module, method: str, *, world_size: int, device: torch.device,
             time_step: bool = True, extra: Cost | None = None) -> Estimate:
    """The peak memory per device of training `model` as `cfg` says, and whether it fits.

    Args:
        cfg: the checked config of a fine-tuning recipe (TrainingSettings keys).
        model: the config's model on the meta device with its adapters (setup's `_model`);
            not changed (the activations are traced on a copy).
        method: "full", "lora" or "adapter".
        world_size: processes sharing the model under FSDP2 (1: one device).
        device: the device the run trains on.
        time_step: also estimate the time per step (on a CPU this measures a matmul for a fraction of a second).
        extra: what the objective adds (tunelib.training.objective_setup.cost); None: cross-entropy alone.

    Returns:
        An Estimate with the breakdown, the capacity and, when it does not fit, advice.
    """
    extra = extra or Cost()
    plan = replace(_plan(cfg, model, world_size, adapters=method != "full"), sequences=extra.sequences)
    model = _traceable(model, method)
    dtype = DTYPES[cfg.dtype]
    acts = _saved_bytes(model, plan.batch_size, plan.seq_len, dtype)
    frozen = {label: _Frozen.of(m, cfg, dtype) for label, m in extra.frozen.items()}
    result = Estimate(_parts(cfg, model, plan, acts, dtype, device, frozen), _device_name(device),
                      _capacity(device, world_size), plan)
    if cfg.tokenizer.get("max_seq_len") is None:
        result.notes.append(f"tokenizer.max_seq_len is null: rows of up to {plan.seq_len} tokens assumed; "
                            "set it to the length your data needs")
    if world_size > 1 and cfg.fsdp_cpu_offload:
        result.notes.append("fsdp_cpu_offload=True keeps the shards and optimizer states in CPU memory; "
                            "they are counted here as if on the device")
    if time_step:
        forwards = extra.reference_forwards * _matmul_weights(model)
        forwards += sum(_matmul_weights(m) for m in extra.frozen.values())
        result.step_seconds, result.time_note = _step_seconds(cfg, model, method, plan, device, forwards)
    if result.fits is False:
        result.advice = _advice(cfg, model, method, plan, acts, dtype, device, result.capacity, frozen)
    return result


def estimate_config(cfg, *, world_size: int = 1, recipe=None) -> tuple[Estimate, str]:
    """`estimate` for a config alone, as `tune estimate` asks: the model is built on the meta
    device as the run builds it, what trains read from its adapters, and what the recipe's
    objective adds (a teacher, a reference, pairs) from `recipe` (tunelib.training.Recipe; None:
    cross-entropy alone).

    Call it after the recipe's own checks (`tune validate`'s), which refuse a model the recipe
    cannot train. Returns (the estimate, the method).

    Raises:
        ConfigError: a model's builder needs its folder's config.json, and it is not there.
    """
    model = apply_peft(meta_model(cfg.model, cfg.checkpoint_dir))  # as setup builds it
    if recipe is not None:
        trains = recipe.trained_for(model)
        method, extra = trains.name, cost(cfg, recipe.objective, trains)
    else:
        method = "full" if not adapter_params(model) else "adapter" if llama_adapter_spec(model) else "lora"
        extra = None
    device = resolve_device(cfg.device)
    return estimate(cfg, model, method, world_size=world_size, device=device, extra=extra), method


def _plan(cfg, model: nn.Module, world_size: int, *, adapters: bool) -> Plan:
    seq = cfg.tokenizer.get("max_seq_len") or min(DEFAULT_SEQ_LEN, model.config.max_position_embeddings)
    every = (cfg.ac_option if cfg.ac_mode == "selective" else 1) if cfg.enable_activation_checkpointing else None
    transform = nf4_transform(model)
    return Plan(batch_size=cfg.batch_size, seq_len=int(seq), checkpoint_every=every, world_size=world_size,
                quantized=frozenset(transform.names if transform is not None else ()),
                accumulation=cfg.gradient_accumulation_steps, gradient_sync=cfg.fsdp_gradient_sync, adapters=adapters)


def _traceable(model: nn.Module, method: str) -> nn.Module:
    """A copy of the meta model with the run's trained weights, and only those, requiring grad."""
    model = copy.deepcopy(model)
    trained = set(adapter_params(model)) if method != "full" else None
    for name, p in model.named_parameters():
        p.requires_grad_(trained is None or name in trained)
    return model


# -- the parts ----------------------------------------------------------------------------------


def _parts(cfg, model: nn.Module, plan: Plan, acts: _Saved, dtype: torch.dtype,
           device: torch.device, others: dict[str, _Frozen]) -> dict[str, int]:
    n = plan.world_size
    rows = plan.batch_size * plan.sequences
    frozen, trained = _weight_bytes(cfg, model, plan, dtype)
    largest = max((_bytes(p, _trained_dtype(cfg, plan, dtype)) for p in _trained(model)), default=0)
    parts = {
        "baseline (this process)": _baseline(cfg, device),
        "weights": frozen // n,
        "trained weights": trained // n,
        "gradients": _gradient_bytes(cfg, model, plan, dtype, largest),
        "optimizer states": _optimizer_bytes(cfg, model, plan, dtype) // n + largest,
        "activations": acts.total(plan.checkpoint_every) * rows // acts.batch,
        "loss chunks": _loss_bytes(cfg, model, plan, dtype),
    }
    for label, other in others.items():
        parts[f"{label} weights"] = other.weights // n
        parts[f"{label} forward"] = other.forward(rows * plan.seq_len, _chunks(cfg))
    if n > 1:  # the frozen models gather their layers while the trained one waits, and the other way round
        gathers = [_gather_bytes(model, plan.quantized, dtype), *(other.gathered for other in others.values())]
        parts["FSDP all-gather buffers"] = max(gathers)
    return parts


@dataclass
class _Frozen:
    """A frozen model's bytes: its weights as stored, one of its decoder layers and output layer
    gathered, and what its forward leaves (per token: the hidden state; per logits chunk: fp32 logits)."""

    weights: int
    gathered: int
    hidden_size: int
    vocab_size: int
    itemsize: int

    @classmethod
    def of(cls, model: nn.Module, cfg, dtype: torch.dtype) -> _Frozen:
        transform = nf4_transform(model)
        quantized = frozenset(transform.names if transform is not None else ())
        stored = stored_dtype(cfg, dtype)
        weights = sum(math.ceil(p.numel() * NF4_BYTES) if name in quantized else _bytes(p, stored)
                      for name, p in model.named_parameters())
        return cls(weights, _gather_bytes(model, quantized, dtype), model.config.hidden_size,
                   model.config.vocab_size, dtype.itemsize)

    def forward(self, tokens: int, chunks: int) -> int:
        return tokens * self.hidden_size * self.itemsize + math.ceil(tokens / chunks) * self.vocab_size * 4


def _chunks(cfg) -> int:
    return int((cfg.loss or {}).get("num_output_chunks", 8))


def _trained(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _trained_dtype(cfg, plan: Plan, dtype: torch.dtype) -> torch.dtype:
    """The dtype the run keeps trained weights in: adapter_dtype for adapters, else the stored dtype."""
    return adapter_dtype(cfg, dtype) if plan.adapters else stored_dtype(cfg, dtype)


def _bytes(p: torch.Tensor, dtype: torch.dtype) -> int:
    return p.numel() * dtype.itemsize


def _weight_bytes(cfg, model: nn.Module, plan: Plan, dtype: torch.dtype) -> tuple[int, int]:
    """(frozen, trained) bytes of the model's weights; a tied weight counts once."""
    frozen = trained = 0
    for name, p in model.named_parameters():  # named_parameters yields a shared tensor once
        if p.requires_grad:
            trained += _bytes(p, _trained_dtype(cfg, plan, dtype))
        elif name in plan.quantized:
            frozen += math.ceil(p.numel() * NF4_BYTES)
        else:
            frozen += _bytes(p, stored_dtype(cfg, dtype))
    return frozen, trained


def _gradient_bytes(cfg, model: nn.Module, plan: Plan, dtype: torch.dtype, largest: int) -> int:
    if getattr(cfg, "optimizer_in_bwd", False):
        return largest  # each weight steps as soon as its gradient is complete
    if plan.world_size > 1 and plan.accumulation > 1 and plan.gradient_sync == "last_micro_batch":
        return sum(p.numel() * 4 for p in _trained(model))  # whole fp32 gradients between micro-batches
    return sum(_bytes(p, _trained_dtype(cfg, plan, dtype)) for p in _trained(model)) // plan.world_size


def optimizer_state_bytes(component: str, weight_bytes: int) -> float:
    """Bytes of optimizer state per trained weight of `weight_bytes` bytes, for a `_component_` path.

    torch's and torchao's Adam family, SGD (momentum read by the caller) and others (assumed
    Adam's two moments). Returns a float: torchao's block scales are a fraction of a byte.
    """
    per = OPTIMIZER_STATE_BYTES.get(component.rsplit(".", 1)[-1], None)
    return 2 * weight_bytes if per is None else per


def _optimizer_bytes(cfg, model: nn.Module, plan: Plan, dtype: torch.dtype) -> int:
    name = str(cfg.optimizer.get("_component_", ""))
    weights, size = sum(p.numel() for p in _trained(model)), _trained_dtype(cfg, plan, dtype).itemsize
    if name.rsplit(".", 1)[-1] == "SGD":
        return weights * size if float(cfg.optimizer.get("momentum", 0) or 0) > 0 else 0  # one momentum buffer
    amsgrad = 1.5 if cfg.optimizer.get("amsgrad") else 1.0  # a third moment
    return int(weights * optimizer_state_bytes(name, size) * amsgrad)


def _loss_bytes(cfg, model: nn.Module, plan: Plan, dtype: torch.dtype) -> int:
    """The loss's buffers at their peak: the hidden states' gradient (and the output layer's when
    it trains), the trained rows' copy, and one chunk's fp32 logits with their gradient."""
    rows = plan.batch_size * plan.sequences * plan.seq_len
    hidden, vocab = model.config.hidden_size, model.config.vocab_size
    chunks = _chunks(cfg)
    size = dtype.itemsize
    head = model.lm_head.weight
    buffers = 2 * rows * hidden * size + (head.numel() * size if head.requires_grad else 0)
    return buffers + math.ceil(rows / chunks) * vocab * (4 + 2 * size)


def _gather_bytes(model: nn.Module, quantized: frozenset[str], dtype: torch.dtype) -> int:
    """Two gathered decoder layers (running and prefetched) and the gathered output layer."""
    first = {name: p for name, p in model.named_parameters() if name.startswith("model.layers.0.")}
    layer = sum(math.ceil(p.numel() * NF4_BYTES) if n in quantized else _bytes(p, dtype) for n, p in first.items())
    return 2 * layer + _bytes(model.lm_head.weight, dtype)


def _baseline(cfg, device: torch.device) -> int:
    """What the process holds before loading: on CUDA the allocator's reserve now; on a CPU the
    resident memory once the libraries the run will import are imported (so measured, not guessed)."""
    if device.type == "cuda":
        return torch.cuda.memory_reserved(device)
    for module in _imports_of_the_run(cfg):
        importlib.import_module(module)
    return _status_bytes("VmRSS")


def _imports_of_the_run(cfg) -> list[str]:
    """Libraries the run imports after setup builds the model: the data's, and torch.compile's
    (Inductor) with the optimizer's when torchao's low-bit optimizers compile their step."""
    optimizer = str(cfg.optimizer.get("_component_", ""))
    modules = ["datasets"]
    if optimizer.startswith("torchao.") or cfg.compile:
        modules.append("torch._inductor.compile_fx")
    if optimizer.startswith("torchao."):
        modules.append(optimizer.rsplit(".", 1)[0])
    return modules


def _status_bytes(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1]) * 1024
    return 0


# -- activations: traced on the meta device ----------------------------------------------------------


@dataclass
class _Saved:
    """Bytes autograd keeps for backward: outside the decoder layers, per layer, and per layer's input."""

    batch: int
    outside: int
    per_layer: list[int]
    layer_input: int

    def total(self, every: int | None) -> int:
        """All saved bytes, with every `every`-th layer checkpointed (None: none), and backward's
        working memory: the gradients flowing through one layer, about what that layer keeps."""
        chosen = [i for i in range(len(self.per_layer)) if every and (i + 1) % every == 0]
        kept = sum(b for i, b in enumerate(self.per_layer) if i not in chosen)
        recompute = max((self.per_layer[i] for i in chosen), default=0)  # one layer at a time in backward
        working = max(self.per_layer, default=0)
        return self.outside + kept + len(chosen) * self.layer_input + recompute + working


class _FusedAttention(torch.autograd.Function):
    """What a fused SDPA kernel keeps for backward: q, k, v, the output and the log-sum-exp."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty(*q.shape[:-1], v.shape[-1])  # (B, H, T, D)
        ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
        return out

    @staticmethod
    def backward(ctx, grad):  # never run: the trace only counts what forward keeps
        raise NotImplementedError


class _AsFusedAttention(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            return _FusedAttention.apply(*args[:3])
        return func(*args, **(kwargs or {}))


def _saved_bytes(model: nn.Module, batch: int, seq: int, dtype: torch.dtype) -> _Saved:
    """Run the meta model's forward on `batch` x `seq` tokens and count what autograd keeps.

    Tensors are counted once per storage, weights not at all; float tensors at `dtype`'s size
    (the meta model is fp32, the run computes in `dtype`).
    """
    # Meta storages have no data pointer; the address of the storage itself tells them apart.
    weights = {p.untyped_storage()._cdata for p in model.parameters()}
    seen: dict[int, tuple[int | None, int]] = {}
    where: list[int | None] = [None]

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage()._cdata
        if key not in weights and key not in seen:
            size = dtype.itemsize if t.is_floating_point() and t.element_size() == 4 else t.element_size()
            seen[key] = (where[0], t.untyped_storage().nbytes() // t.element_size() * size)
        return t

    handles = [layer.register_forward_pre_hook(_entering(where, i)) for i, layer in enumerate(model.model.layers)]
    handles += [layer.register_forward_hook(_entering(where, None)) for layer in model.model.layers]
    ids = torch.zeros(batch, seq, dtype=torch.long, device="meta")
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _AsFusedAttention():
            out = model.hidden(ids)
    finally:
        for handle in handles:
            handle.remove()
    per_layer = [sum(b for w, b in seen.values() if w == i) for i in range(len(model.model.layers))]
    del out
    return _Saved(batch, sum(b for w, b in seen.values() if w is None), per_layer,
                  batch * seq * model.config.hidden_size * dtype.itemsize)


def _entering(where: list, index: int | None):
    def hook(*_):
        where[0] = index
    return hook


# -- time per step -------------------------------------------------------------------------------


def _step_seconds(cfg, model: nn.Module, method: str, plan: Plan, device: torch.device,
                  forward_weights: int = 0) -> tuple[float | None, str]:
    """Seconds per optimizer step; `forward_weights`: the matmul weights of the forwards run
    without gradients on every token beside the trained model's (teacher, reference)."""
    tokens = plan.batch_size * plan.sequences * plan.seq_len * plan.accumulation
    c = model.config
    head_dim = c.head_dim or c.hidden_size // c.num_attention_heads
    attention = 12 * c.num_hidden_layers * plan.seq_len * c.num_attention_heads * head_dim
    n = _matmul_weights(model)
    per_token = (6 if method == "full" else 4) * n + attention + 2 * forward_weights
    if plan.checkpoint_every:  # the checkpointed layers' forward runs again in backward
        per_token += (2 * n + attention // 3) // plan.checkpoint_every
    peak, note = _peak_flops(cfg, device)
    return (None, note) if peak is None else (tokens * per_token / peak, note)


def _matmul_weights(model: nn.Module) -> int:
    """N: the weights a token meets in matmuls: every linear layer (decoder linears and the output
    layer; no embedding lookup) and, of stacked experts, the share of the experts it is routed to."""
    c = model.config
    linears = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    experts = sum(m.weight.numel() for m in model.modules() if isinstance(m, GroupedLinear))
    return linears + (experts * c.num_experts_per_tok // c.num_experts if experts else 0)


def _peak_flops(cfg, device: torch.device) -> tuple[float | None, str]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in GPU_BF16_PEAK.items() if k in name), None)
        if peak is None or cfg.dtype != "bf16":
            return None, f"no bf16 peak known for {name}" if peak is None else "dtype=fp32 on a GPU"
        return peak * GPU_MFU, ""
    return cpu_matmul_rate() * CPU_MATMUL_SHARE, ""


def cpu_matmul_rate(n: int = 1024, repeats: int = 5) -> float:
    """This machine's best fp32 FLOP/s of an n x n matmul with torch's threads, now."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(repeats + 1):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def _seconds(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


# -- the device, and what to change --------------------------------------------------------------


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _capacity(device: torch.device, processes: int) -> int | None:
    """What one process may use: a GPU's free memory, or its share of this machine's memory
    (the processes of a CPU run share it; all of them are taken to run on this machine)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)  # starts the CUDA context, so its memory is not free
        return free + torch.cuda.memory_reserved(device)
    available = _meminfo_bytes("MemAvailable")
    return None if available is None else (available + _status_bytes("VmRSS")) // processes


def _meminfo_bytes(field_name: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _advice(cfg, model, method, plan: Plan, acts: _Saved, dtype, device, capacity: int,
            frozen: dict[str, _Frozen]) -> list[str]:
    """One line per change that makes the run fit (or shrinks it most), with the peak it gives."""
    def total(others=frozen, **changes) -> int:
        return sum(_parts(cfg, model, replace(plan, **changes), acts, dtype, device, others).values())

    advice = []
    if REFERENCE in frozen:
        without = {label: other for label, other in frozen.items() if label != REFERENCE}
        advice.append(_change("precompute_reference_log_probs=True (the reference's log-probs computed once, before "
                              "training)", total(without), capacity))
    if plan.checkpoint_every != 1:
        advice.append(_change("enable_activation_checkpointing=True", total(checkpoint_every=1), capacity))
    if method != "full" and not plan.quantized:
        advice.append(_change("model.quantize_base=True (QLoRA: NF4 decoder weights)",
                              total(quantized=_decoder_linears(model)), capacity))
    if plan.batch_size > 1:
        advice.append(_change(f"batch_size=1 gradient_accumulation_steps={plan.accumulation * plan.batch_size} "
                              "(the same tokens per step)", total(batch_size=1), capacity))
    # More processes on a CPU share the same memory: only GPUs bring their own.
    more = (2, 4, 8, 16, 32, 64) if device.type == "cuda" else ()
    gpus = next((n for n in more if n > plan.world_size and total(world_size=n) <= capacity), None)
    if gpus is not None:
        advice.append(_change(f"tune run --nproc_per_node {gpus} (FSDP2 over {gpus} devices)",
                              total(world_size=gpus), capacity))
    return advice


def _change(what: str, total: int, capacity: int) -> str:
    verdict = "fits" if total <= capacity else "still too much"
    return f"{what}: {total / GIB:.2f} GiB ({verdict})"


def _decoder_linears(model: nn.Module) -> frozenset[str]:
    """The weights QLoRA keeps in NF4: every linear and stacked expert weight inside the decoder
    layers but the mixture-of-experts routers (full precision, as tunelib.peft keeps them)."""
    modules = dict(model.model.layers.named_modules())
    routers = {f"{name}.gate" for name, m in modules.items() if isinstance(m, MoE)}
    names = (f"model.layers.{name}.weight" for name, m in modules.items()
             if isinstance(m, (nn.Linear, GroupedLinear)) and name not in routers)
    return frozenset(name for name in names if not is_adapter_key(name))
