"""Transformations applied to a loaded model, written once for every family.

Order matters and is fixed: activation checkpointing (and offloading), then compile, then
FSDP2 sharding (torchtitan's order). Each works per decoder layer (`model.model.layers`) and keeps
parameter names unchanged, so checkpoints and PEFT keys stay Hugging Face's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch.utils.checkpoint import checkpoint

from tunelib.training.distributed import mesh_shape
from tunelib.training.runtime import resolve_dtype


from tunelib.training.activation_offloading import DEFAULT_MIN_BYTES, ActivationOffloader, CudaHostMover, Mover

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a tunelib CausalLM."""
    return list(model.model.layers)


def activation_checkpointing(model: torch.nn.Module, every: int = 1) -> list[int]:
    """Recompute decoder layers' activations in backward instead of keeping them.

    `every`: checkpoint every k-th layer, counted from 1 (torchtune's selective `ac_option`:
    layers k-1, 2k-1, ... by index); 1 checkpoints all. The others keep their activations:
    more memory, less recompute. Returns the indices of the checkpointed layers.

    The layer's forward is wrapped in place, rather than the layer in a wrapper module,
    so no `_checkpoint_wrapped_module` prefix ever reaches a state dict.
    """
    layers = decoder_layers(model)
    chosen = [i for i in range(len(layers)) if (i + 1) % every == 0]
    for i in chosen:
        inner = layers[i].forward

        def forward(*args: Any, _inner=inner, **kwargs: Any):
            if torch.is_grad_enabled():
                return checkpoint(_inner, *args, use_reentrant=False, **kwargs)
            return _inner(*args, **kwargs)

        layers[i].forward = forward
    return chosen


def activation_offloading(model: torch.nn.Module, device: torch.device, *, mover: Mover | None = None,
                          min_bytes: int = DEFAULT_MIN_BYTES) -> ActivationOffloader:
    """Keep what the decoder saves for backward in CPU memory instead of on `device`.

    The decoder stack's forward (embedding, layers, final norm) is wrapped in place in the
    offloader's saved-tensor hooks. Under activation checkpointing that moves each layer's
    input; the final norm's tensors stay (backward needs them first), and the output layer and
    the loss run outside. The hooks sit outside each layer's forward, so compiled layers run
    under them rather than tracing them.

    Args:
        model: a tunelib CausalLM.
        device: the CUDA device training runs on.
        mover: how tensors travel; None moves them to pinned CPU memory (`CudaHostMover`).
        min_bytes: smaller saved tensors stay on the device.

    Returns the offloader, whose counters say how much it moved. Raises RuntimeError (from
    torch) when `mover` is None and CUDA is not available.
    """
    offloader = ActivationOffloader(mover or CudaHostMover(device), min_bytes)
    stack, norm = model.model, model.model.norm
    stack_forward, norm_forward = stack.forward, norm.forward

    def forward(*args: Any, **kwargs: Any):
        with offloader.hooks():
            return stack_forward(*args, **kwargs)

    def norm_kept(*args: Any, **kwargs: Any):
        with offloader.kept():
            return norm_forward(*args, **kwargs)

    stack.forward, norm.forward = forward, norm_kept
    return offloader


def compile_layers(model: torch.nn.Module, backend: str = "inductor") -> None:
    """torch.compile each decoder layer as one whole graph (regional compile: the graph is reused
    by every layer alike).

    `fullgraph=True`: a graph break (code Dynamo cannot trace) is an error at the first step
    rather than a layer that silently runs partly eager. A batch length that changes makes the
    length symbolic from the second one on (Dynamo's automatic dynamic shapes), so the graphs
    per layer stay bounded (tests/training/test_compile_graphs.py counts them). `backend`:
    torch.compile's (tests trace with "eager" or "aot_eager" to count graphs quickly).
    """
    for layer in decoder_layers(model):
        layer.compile(fullgraph=True, backend=backend)


def compile_loss(loss: Any) -> bool:
    """Ask `loss` to torch.compile its own hot part, through its `compile()` method (the built-in
    LinearCrossEntropyLoss compiles its per-chunk cross-entropy). Returns whether it had one."""
    compile_method = getattr(loss, "compile", None)
    if compile_method is None:
        return False
    compile_method()
    return True


def shard(model: torch.nn.Module, cfg: Any, device: torch.device, *, cast_params: bool = True) -> None:
    """FSDP2: shard each decoder layer and then the root over the data-parallel mesh.

    Takes the model, the checked settings (`dtype`, `fsdp_*`, `data_parallel_*`) and this
    process's device; the process group must be started. Weights are gathered in the training
    dtype (whatever they are stored in: fp32 master weights compute in bf16), or with
    `cast_params=False` each in the dtype it is stored in (fp32 adapters beside a bf16 base);
    gradients are reduced in fp32. Returns nothing: the model is sharded in place.

    Raises:
        ConfigError: data_parallel_replicate_dim x data_parallel_shard_dim is not the world size.
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    options = {
        "mesh": data_parallel_mesh(device, cfg.data_parallel_shard_dim, cfg.data_parallel_replicate_dim),
        "mp_policy": MixedPrecisionPolicy(param_dtype=resolve_dtype(cfg.dtype, device) if cast_params else None,
                                          reduce_dtype=torch.float32),
        "reshard_after_forward": cfg.fsdp_reshard_after_forward,
    }
    if cfg.fsdp_cpu_offload:
        # Pinned host memory lets the copies to and from the GPU run beside compute; a machine
        # without a GPU has none to pin.
        options["offload_policy"] = CPUOffloadPolicy(pin_memory=device.type == "cuda")
    for layer in decoder_layers(model):
        fully_shard(layer, **options)
    kept = {**options, "reshard_after_forward": False}
    if model.lm_head.weight is not model.model.embed_tokens.weight:
        # Units of their own: the embedding is gathered only for its lookup (it is the size of
        # several layers), and lm_head from the loss's first chunk through its backward (the
        # loss calls it chunk by chunk: regathering per chunk would cost more than it saves).
        fully_shard(model.model.embed_tokens, **options)
        fully_shard(model.lm_head, **kept)
    # The root holds the rest (the final norm; a tied embedding, which must stay one unit).
    fully_shard(model, **kept)
    # The loss calls `hidden` and `logits`, not forward: FSDP must gather around those too.
    for method in ("hidden", "logits"):
        register_fsdp_forward_method(model, method)


def data_parallel_mesh(device: torch.device, shard_dim: int, replicate_dim: int) -> DeviceMesh:
    """The DeviceMesh FSDP2 shards over: 1-D (FSDP) or ("dp_replicate", "dp_shard") (HSDP).

    Takes torchtune's `data_parallel_shard_dim` (-1: the rest) and `data_parallel_replicate_dim`;
    the process group must be started. Consecutive ranks share a shard group, so with one
    replica per node the all-gathers and reduce-scatters stay inside a node and only the
    gradient all-reduce crosses nodes.

    Raises:
        ConfigError: their product is not the world size.
    """
    from torch.distributed.device_mesh import init_device_mesh

    replicate, shard_size = mesh_shape(dist.get_world_size(), shard_dim, replicate_dim)
    if replicate == 1:
        return init_device_mesh(device.type, (shard_size,), mesh_dim_names=("dp_shard",))
    return init_device_mesh(device.type, (replicate, shard_size), mesh_dim_names=("dp_replicate", "dp_shard"))
