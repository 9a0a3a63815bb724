"""Adapter parameters of a model: which they are, their first values, and which ones train."""

from __future__ import annotations

import re

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from tunelib.dtensors import whole_params
from tunelib.peft.dora import DoRAEmbedding, DoRALinear
from tunelib.peft.experts import LoRAGroupedLinear
from tunelib.peft.llama_adapter import initialize_llama_adapter, tuned_norm_weights
from tunelib.peft.lora import LoRAEmbedding, LoRALinear

# The parameter names PEFT gives LoRA and DoRA adapters, and those of LLaMA-Adapter
# (tunelib's own); a base checkpoint has none of them.
_ADAPTER_KEY = re.compile(r"(^|\.)(lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector"
                          r"|adapter_prompt|adapter_gate|adapter_scale|adapter_bias)(\.|$)")

LORA_MODULES = (LoRALinear, LoRAEmbedding, LoRAGroupedLinear)
DORA_MODULES = (DoRALinear, DoRAEmbedding)


def is_adapter_key(name: str) -> bool:
    """Whether parameter `name` belongs to an adapter, i.e. a base checkpoint does not have it.

    Pass it as `ignore_missing` to the weight loader. Example: `...q_proj.lora_A.weight`,
    `...q_proj.lora_magnitude_vector` and `...self_attn.adapter_prompt` are adapter keys;
    `...q_proj.weight` is not.
    """
    return bool(_ADAPTER_KEY.search(name))


def adapter_owner(name: str) -> str:
    """The module an adapter parameter belongs to: `a.q_proj.lora_A.weight` -> `a.q_proj`."""
    match = _ADAPTER_KEY.search(name)
    if match is None:
        raise ValueError(f"{name} is not an adapter parameter")
    return name[: match.start()]


def lora_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The LoRA/DoRA modules of `model` by full name, in model order."""
    return {name: module for name, module in model.named_modules() if isinstance(module, LORA_MODULES)}


def adapter_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters an adapter method trains, by full name (what the optimizer should get).

    These are the adapter keys, plus, for LLaMA-Adapter v2, the model's norm weights.
    """
    norms = set(tuned_norm_weights(model))
    return {name: p for name, p in model.named_parameters() if is_adapter_key(name) or name in norms}


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter tensors by our parameter name (PEFT's key without `base_model.model.`), detached."""
    return {name: p.detach() for name, p in adapter_params(model).items()}


def set_trainable(model: nn.Module) -> int:
    """Make `adapter_params` require grad and freeze all others; return the trainable count."""
    trained = adapter_params(model).keys()
    trainable = 0
    for name, p in model.named_parameters():
        wanted = name in trained
        p.requires_grad_(wanted)
        trainable += p.numel() if wanted else 0
    return trainable


def initialize_adapters(model: nn.Module, device: torch.device | str | None = None,
                        dtype: torch.dtype | None = None) -> None:
    """Give values to every adapter still on the meta device, then to every meta DoRA magnitude.

    LLaMA-Adapter parameters get theirs too (prompts N(0, 1), gates 0, v2 scales 1 and biases 0).

    Adapters are drawn in model order on the CPU generator, so the same torch seed gives the
    same adapters on any device: Linear A kaiming-uniform (a=√5) and B zeros; embedding A
    zeros and B ~ N(0, 1). They land on `device` in `dtype` (default: the base weight's; the
    recipes pass `adapter_dtype`, fp32 by default, as PEFT keeps adapters on a bf16 base).
    Magnitudes are ‖W + s·BA‖ of the base weights (dequantised NF4 under QLoRA); while a base
    weight is still on meta its magnitude stays there, for a second call once the base is
    loaded. Adapters already holding values (loaded or resumed) are left alone.
    """
    for name, module in lora_modules(model).items():
        # A and B decide (DoRA's magnitude may still wait for the base weights on meta).
        first = next(p for p_name, p in module.named_parameters()
                     if is_adapter_key(p_name) and p_name != "lora_magnitude_vector")
        if first.is_meta:
            module.reset_adapter_parameters(*_placement(module.weight, first, device, dtype))
    for name, module in lora_modules(model).items():
        if isinstance(module, DORA_MODULES) and module.lora_magnitude_vector.is_meta and not module.weight.is_meta:
            _reset_magnitude(module)

    initialize_llama_adapter(model, device, dtype)


def store_trained_in(model: nn.Module, dtype: torch.dtype) -> None:
    """Keep every parameter that `adapter_params` trains in `dtype`, converting those loaded in
    another (LLaMA-Adapter v2's norm weights come with the base, in its dtype).

    Call it after loading and before the first forward; a parameter sharded by FSDP2 stays
    sharded as it was (FSDP2 takes the new one up at its first forward). Parameters still on
    meta are left alone.
    """
    for name, param in adapter_params(model).items():
        if param.dtype == dtype or param.is_meta:
            continue
        owner, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(owner), leaf,
                nn.Parameter(param.detach().to(dtype), requires_grad=param.requires_grad))


@torch.no_grad()
def put_value(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Give parameter `name` of `model` the values of `tensor` (whole, as a file holds it).

    In place where the parameter has values; a parameter sharded by FSDP2 takes this process's
    piece. A parameter still on meta gets a new one, where its module's other tensors are (the
    CPU when none has values yet), with the same requires_grad.
    """
    param = model.get_parameter(name)
    value = tensor.to(param.dtype)
    if isinstance(param, DTensor):
        value = distribute_tensor(value, param.device_mesh, param.placements, src_data_rank=None)
    elif param.is_meta:
        owner = model.get_submodule(name.rpartition(".")[0])
        placed = [p for p in owner.parameters() if not p.is_meta]
        value = value.to(placed[0].device if placed else torch.device("cpu"))
    if not param.is_meta:
        param.copy_(value)
        return
    owner_name, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(owner_name), leaf, nn.Parameter(value, requires_grad=param.requires_grad))


def _reset_magnitude(module: nn.Module) -> None:
    """`module.reset_magnitude()`, also when FSDP2 has sharded the module's parameters: the
    norms are then taken of the whole tensors (one module's at a time), and this process keeps
    its piece of the magnitude, placed as the (meta) sharded magnitude was."""
    magnitude = module.lora_magnitude_vector
    if not isinstance(magnitude, DTensor):
        module.reset_magnitude()
        return
    others = [name for name, _ in module.named_parameters() if name != "lora_magnitude_vector"]
    with whole_params(module, others):
        module.reset_magnitude()
        whole = module.lora_magnitude_vector.detach()
    piece = distribute_tensor(whole, magnitude.device_mesh, magnitude.placements, src_data_rank=None)
    module.lora_magnitude_vector = nn.Parameter(piece, requires_grad=magnitude.requires_grad)


def _placement(base: torch.Tensor, adapter: torch.Tensor, device, dtype):
    if device is None:
        device = torch.device("cpu") if base.is_meta else base.device
    return device, dtype or adapter.dtype
