"""Swap a model's modules for their LoRA, DoRA and NF4 versions, in place, by name.

The new modules share the old ones' weight tensors (tied embeddings stay tied) and keep their
parameter names. On a meta-device model the adapters stay on meta until
`initialize_adapters`; on a model with real weights they are initialised at once.
"""

from __future__ import annotations

from torch import nn

from tunelib.errors import ConfigError
from tunelib.models.moe import GroupedLinear, MoE
from tunelib.peft.dora import DoRAEmbedding, DoRALinear
from tunelib.peft.experts import LoRAGroupedLinear, NF4GroupedLinear, flatten_for_nf4
from tunelib.peft.lora import LoRAEmbedding, LoRALinear, LoraSpec
from tunelib.peft.params import LORA_MODULES, initialize_adapters
from tunelib.peft.targets import in_decoder_layer
from tunelib.quantization import nf4


def add_adapters(model: nn.Module, specs: dict[str, LoraSpec], *, quantize_base: bool = False) -> None:
    """Give each module named in `specs` its adapter; with `quantize_base`, NF4 for decoder linears.

    QLoRA quantizes every `nn.Linear` and stacked expert weight inside a decoder layer, adapted or
    not; the embedding, the output layer and MoE routers keep full precision. Raises ConfigError
    for a module that cannot take an adapter or a weight NF4 cannot hold, before anything is changed.
    """
    to_quantize = _decoder_linears(model) if quantize_base else []
    for name in to_quantize:
        nf4.check_shape(f"{name}.weight", model.get_submodule(name).weight.shape)
    for name, spec in specs.items():
        _check_adaptable(name, model.get_submodule(name), spec)

    for name, spec in specs.items():
        _replace(model, name, _adapted(model.get_submodule(name), spec, quantize=name in to_quantize))
    for name in to_quantize:
        if name not in specs:
            _replace(model, name, _frozen_nf4(model.get_submodule(name), name))

    for name in to_quantize:
        module = model.get_submodule(name)
        if isinstance(module, GroupedLinear):
            flatten_for_nf4(module)
        nf4.quantize_weight_in_place(module, "weight", f"{name}.weight")
        # Frozen already on meta, so a loader that keeps requires_grad makes a frozen NF4 parameter.
        module.weight.requires_grad_(False)
    # With real base weights (not a meta build) the adapters can get their values right away.
    if any(not model.get_submodule(name).weight.is_meta for name in specs):
        initialize_adapters(model)


def _decoder_linears(model: nn.Module) -> list[str]:
    # A mixture-of-experts router (`mlp.gate`) stays in full precision: it is small, and rounding
    # its logits would change which experts tokens go to.
    routers = {f"{name}.gate" for name, module in model.named_modules() if isinstance(module, MoE)}
    return [name for name, module in model.named_modules()
            if isinstance(module, (nn.Linear, GroupedLinear)) and in_decoder_layer(name) and name not in routers]


def _frozen_nf4(module: nn.Module, name: str) -> nn.Module:
    if isinstance(module, GroupedLinear):
        return NF4GroupedLinear.from_grouped(module)
    return nf4.NF4Linear.from_linear(module, name)


def _check_adaptable(name: str, module: nn.Module, spec: LoraSpec) -> None:
    if isinstance(module, LORA_MODULES):
        raise ConfigError(f"{name} already has a LoRA adapter; apply adapters once")
    if type(module) in (GroupedLinear, NF4GroupedLinear):  # stacked experts (tunelib.models.moe)
        if spec.use_dora:
            raise ConfigError(f"cannot put DoRA on {name}: DoRA on mixture-of-experts projections is not "
                              "supported (PEFT has none either); set use_dora=False or apply_lora_to_mlp=False")
        return
    # A subclass with its own forward (a scaled embedding, say) would lose that forward in the swap.
    for base in (nn.Linear, nn.Embedding):
        if isinstance(module, base) and type(module).forward in (base.forward, nf4.NF4Linear.forward):
            return
    raise ConfigError(
        f"cannot put a LoRA adapter on {name}: it is a {type(module).__name__}, "
        "and tunelib adapts plain nn.Linear and nn.Embedding modules"
    )


def _adapted(module: nn.Module, spec: LoraSpec, *, quantize: bool) -> nn.Module:
    if isinstance(module, GroupedLinear):
        return LoRAGroupedLinear.from_grouped(module, spec, quantize_base=quantize)
    if isinstance(module, nn.Embedding):
        return (DoRAEmbedding if spec.use_dora else LoRAEmbedding).from_embedding(module, spec)
    return (DoRALinear if spec.use_dora else LoRALinear).from_linear(module, spec, quantize_base=quantize)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, leaf, new)
