"""The quantizers a config names: one target quantization each, for training and for quantizing.

    quantizer:
      _component_: tunelib.quantization.Int8DynActInt4WeightQATQuantizer   # torchtune's names work too
      groupsize: 256

A quantizer says what the deployed model's decoder-layer linears will be. QAT recipes train
through its fake quantization (`fake_quantize_configs`), and `tune run quantize` with the same
quantizer writes exactly that quantization (`torchao_config`), so the numbers the model was
trained against are the numbers it runs with:

    Int8DynActInt4WeightQATQuantizer   int8 activations (dynamic, per token, asymmetric) and int4
    (= Int8DynActInt4WeightQuantizer)  weights (symmetric, one scale per `groupsize` inputs):
                                       torchao Int8DynamicActivationIntxWeightConfig; runs on CPU
                                       (and CUDA); the fake quantization equals it bit for bit.
    Int4WeightOnlyQATQuantizer         int4 weights (asymmetric, a bf16 scale and zero point per
    (= Int4WeightOnlyQuantizer)        group), activations unchanged: torchao Int4WeightOnlyConfig
                                       (tinygemm); training runs anywhere, quantizing needs CUDA and bf16.

The QAT and plain names are the same quantizer: torchtune names them apart, tunelib accepts both.
torchao is imported only when a config object is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from tunelib.errors import ConfigError
from tunelib.quantization import weight_only
from tunelib.quantization.nf4 import _quiet_import

GROUP_SIZES = weight_only.INT4_GROUP_SIZES


@dataclass(frozen=True)
class Quantizer:
    """What the linear layers inside decoder layers are quantized to (see the module docs)."""

    groupsize: int = 256
    scheme: ClassVar[str] = ""  # the short name `tune run quantize` prints and writes into folder names

    def __post_init__(self):
        if not isinstance(self.groupsize, int) or isinstance(self.groupsize, bool) or self.groupsize < 1:
            raise ConfigError(f"quantizer.groupsize={self.groupsize!r}; use a positive whole number, e.g. 256")

    def torchao_config(self):
        """The torchao post-training config that quantizes a linear this way."""
        raise NotImplementedError

    def fake_quantize_configs(self) -> tuple[object | None, object]:
        """(activation, weight) torchao fake-quantize configs that simulate `torchao_config` in training."""
        raise NotImplementedError

    def check_inputs(self, name: str, in_features: int) -> None:
        """Refuse a linear whose input size the groups do not divide.

        Raises:
            ConfigError: naming the layer, its size and a group size that would fit.
        """
        if in_features % self.groupsize:
            fits = [g for g in GROUP_SIZES if in_features % g == 0]
            fix = f"use quantizer.groupsize={fits[-1]}" if fits else "no group size of 32-256 divides it"
            raise ConfigError(f"quantizer.groupsize={self.groupsize} does not divide the {in_features} inputs of "
                              f"{name}; {fix}")


@dataclass(frozen=True)
class Int8DynActInt4WeightQuantizer(Quantizer):
    """int8 dynamic per-token activations and int4 symmetric per-group weights (torchao's 8da4w).

    Args:
        groupsize: weights sharing one scale, along the input dimension (torchtune's default 256).
    """

    scheme: ClassVar[str] = "8da4w"

    def torchao_config(self):
        with _quiet_import():
            from torchao.quantization import Int8DynamicActivationIntxWeightConfig, PerGroup
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4,
                                                     weight_granularity=PerGroup(self.groupsize))

    def fake_quantize_configs(self):
        # What torchao's QATConfig derives from torchao_config(), so training simulates exactly
        # what quantize writes (a test compares the two).
        with _quiet_import():
            from torchao.quantization import PerGroup
            from torchao.quantization.qat import IntxFakeQuantizeConfig
        activation = IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False)
        weight = IntxFakeQuantizeConfig(torch.int4, granularity=PerGroup(self.groupsize), is_symmetric=True)
        return activation, weight


@dataclass(frozen=True)
class Int8DynActInt4WeightQATQuantizer(Int8DynActInt4WeightQuantizer):
    """torchtune's QAT name for `Int8DynActInt4WeightQuantizer` (the same quantization)."""


@dataclass(frozen=True)
class Int4WeightOnlyQuantizer(Quantizer):
    """int4 asymmetric per-group weights with bf16 scales and zero points (torchao's tinygemm layout).

    Args:
        groupsize: 32, 64, 128 or 256 weights sharing one scale and zero point.
    """

    scheme: ClassVar[str] = "int4"

    def __post_init__(self):
        super().__post_init__()
        if self.groupsize not in GROUP_SIZES:
            raise ConfigError(f"quantizer.groupsize={self.groupsize}; int4 weight-only takes one of "
                              f"{', '.join(map(str, GROUP_SIZES))}")

    def torchao_config(self):
        return weight_only.torchao_config("int4", self.groupsize)

    def fake_quantize_configs(self):
        # tinygemm's numbers: unsigned 4-bit, bf16 scale and a float zero point per group
        # (torchao's Int4WeightOnlyQATQuantizer uses the same).
        with _quiet_import():
            from torchao.quantization.qat import IntxFakeQuantizeConfig
            from torchao.quantization.quant_primitives import ZeroPointDomain
        weight = IntxFakeQuantizeConfig(dtype=torch.uint4, group_size=self.groupsize, is_symmetric=False,
                                        is_dynamic=True, scale_precision=torch.bfloat16,
                                        zero_point_precision=torch.bfloat16, zero_point_domain=ZeroPointDomain.FLOAT)
        return None, weight


@dataclass(frozen=True)
class Int4WeightOnlyQATQuantizer(Int4WeightOnlyQuantizer):
    """torchtune's QAT name for `Int4WeightOnlyQuantizer` (the same quantization)."""
