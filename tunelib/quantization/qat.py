"""Quantization-aware training: decoder-layer linears that compute through torchao's fake quantization.

    prepare(model, Int8DynActInt4WeightQATQuantizer(groupsize=256))   # on the meta device is fine
    set_fake_quant(model, False)                                      # plain numbers again (and back)
    remove(model)                                                     # plain linears, nothing left over

Each linear inside a decoder layer keeps its class, its `weight` and `bias` and their names: it
becomes a subclass of its own class (as FSDP2's `fully_shard` does) whose `W x + b` quantizes and
dequantizes the input and the weight on the way (torchao's Python fake quantizers, which hold no
state), so checkpoints load and save by key and the optimizer sees the same parameters. Gradients
pass the rounding straight through. For a LoRA linear only the base product `W x + b` is fake-
quantized; the adapter path stays in full precision (torchtune's QAT LoRA does the same).

Embeddings, the output layer and norms are left alone: `tune run quantize` quantizes the same
linears and nothing else (transformers' TorchAoConfig default), so training sees what deployment runs.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from tunelib.errors import ConfigError
from tunelib.quantization.nf4 import _quiet_import
from tunelib.quantization.quantizers import Quantizer

_DECODER_LAYER = re.compile(r"^model\.layers\.\d+\.")
_FAKE_CLASSES: dict[type, type] = {}  # original class -> its fake-quantized subclass


class _FakeQuantized:
    """Mixed into a linear's class: `W x + b` with the input and weight fake-quantized."""

    def _fake_linear(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation_fake_quantizer is not None:
            x = self.activation_fake_quantizer(x)
        return F.linear(x, self.weight_fake_quantizer(self.weight), self.bias)


def _fake_class(cls: type) -> type:
    """The fake-quantized subclass of `cls`: a LoRA linear's base path (`base_forward`), else `forward`."""
    if cls not in _FAKE_CLASSES:
        method = "base_forward" if hasattr(cls, "base_forward") else "forward"
        _FAKE_CLASSES[cls] = type(f"FakeQuantized{cls.__name__}", (_FakeQuantized, cls),
                                  {method: _FakeQuantized._fake_linear})
    return _FAKE_CLASSES[cls]


def target_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The linears QAT and `tune run quantize` change: inside decoder layers, not inside another linear
    (a LoRA linear's `lora_A`/`lora_B` are its adapter, not a base weight)."""
    found: dict[str, nn.Linear] = {}
    for name, module in model.named_modules():
        if not (isinstance(module, nn.Linear) and _DECODER_LAYER.match(name)):
            continue
        if any(name.startswith(outer + ".") for outer in found):
            continue  # named_modules lists a parent before its children
        found[name] = module
    return found


def prepare(model: nn.Module, quantizer: Quantizer, *, enabled: bool = True) -> nn.Module:
    """Make every decoder-layer linear of `model` fake-quantize as `quantizer` says, in place.

    Call it before compiling and sharding (the wrappers then see the final classes). Parameters
    are not touched, so it works on the meta device and before weights are loaded.

    Args:
        model: a tunelib CausalLM, adapters already applied.
        quantizer: e.g. `Int8DynActInt4WeightQATQuantizer(groupsize=256)`.
        enabled: False starts with fake quantization off (`set_fake_quant` turns it on).

    Returns:
        `model`.

    Raises:
        ConfigError: a group size that does not divide a linear's inputs, NF4 base weights
            (quantize_base), DoRA, a linear class with a forward of its own (LLaMA-Adapter v2),
            a mixture-of-experts model, or a model with no decoder-layer linears.
    """
    if getattr(getattr(model, "config", None), "num_experts", None) is not None:
        raise ConfigError(f"QAT does not reach mixture-of-experts layers yet ({model.config.architecture}): their "
                          "experts are stacked weights, not linears, and the router must stay unrounded; train "
                          "with lora_finetune or full_finetune instead")
    linears = target_linears(model)
    if not linears:
        raise ConfigError("quantizer: the model has no linear layers inside decoder layers to fake-quantize")
    for name, linear in linears.items():
        _check(name, linear, quantizer)
    with _quiet_import():
        from torchao.quantization.qat import FakeQuantizerBase
    activation, weight = quantizer.fake_quantize_configs()
    for linear in linears.values():
        if isinstance(linear, _FakeQuantized):
            continue  # prepared already
        linear.activation_fake_quantizer = None if activation is None else FakeQuantizerBase.from_config(activation)
        linear.weight_fake_quantizer = FakeQuantizerBase.from_config(weight)
        linear.__class__ = _fake_class(type(linear))
    set_fake_quant(model, enabled)
    return model


def _check(name: str, linear: nn.Linear, quantizer: Quantizer) -> None:
    if getattr(linear, "quantize_base", False):
        raise ConfigError("QAT fake-quantizes the base weights, which model.quantize_base=True stores in NF4; "
                          "set model.quantize_base=False")
    if hasattr(linear, "lora_magnitude_vector"):
        raise ConfigError("QAT does not train DoRA (its magnitude would be fitted to unquantized weights); "
                          "set model.use_dora=False")
    if type(linear) is not nn.Linear and not hasattr(linear, "base_forward") and not isinstance(linear, _FakeQuantized):
        # Its own forward does more than W x + b (LLaMA-Adapter v2's scales): replacing it would drop that.
        raise ConfigError(f"QAT cannot fake-quantize {name}, a {type(linear).__name__}; QAT trains plain and "
                          "LoRA linears (remove the model's other adapters)")
    quantizer.check_inputs(name, linear.in_features)


def is_prepared(model: nn.Module) -> bool:
    """Whether `prepare` made any of `model`'s linears fake-quantize."""
    return any(isinstance(m, _FakeQuantized) for m in model.modules())


def set_fake_quant(model: nn.Module, enabled: bool) -> None:
    """Turn the fake quantization of a prepared model on or off (off: exactly the plain model)."""
    for module in model.modules():
        if isinstance(module, _FakeQuantized):
            for quantizer in (module.activation_fake_quantizer, module.weight_fake_quantizer):
                if quantizer is not None:
                    quantizer.enabled = enabled


def remove(model: nn.Module) -> nn.Module:
    """Undo `prepare` in place: every linear is its original class again, with the same tensors.

    Returns:
        `model`.
    """
    for module in model.modules():
        if isinstance(module, _FakeQuantized):
            module.__class__ = next(c for c in type(module).__mro__[1:] if c is not _FakeQuantized)
            del module.activation_fake_quantizer, module.weight_fake_quantizer
    return model


class FakeQuantAfter:
    """A training-loop step hook: fake quantization off for the first `steps` optimizer steps, then on.

    Called as hook(run) before each step with `run.state.step` steps done; it sets the state from
    that count alone, so a resumed run is in the same state as one that never stopped (torchtune's
    `fake_quant_after_n_steps`).
    """

    def __init__(self, steps: int):
        self.steps = steps
        self._enabled: bool | None = None

    def __call__(self, run) -> None:
        enabled = run.state.step >= self.steps
        if enabled == self._enabled:
            return
        set_fake_quant(run.model, enabled)
        if enabled or self._enabled is not None:
            run.dist.say(f"Step {run.state.step + 1}: fake quantization on")
        else:
            run.dist.say(f"Fake quantization starts after {self.steps} step{'' if self.steps == 1 else 's'}")
        self._enabled = enabled
