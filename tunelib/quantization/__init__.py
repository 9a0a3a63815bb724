"""Quantized base weights (NF4 through torchao, the frozen base of QLoRA), the quantizers that
quantization-aware training and `tune run quantize` share, and QAT's fake-quantized linears (qat.py).

torchao is imported only when a weight is actually quantized, so importing this package is
cheap.
"""

from tunelib.quantization.nf4 import (
    NF4Linear,
    check_shape,
    dequantize,
    is_nf4,
    linear,
    nf4_transform,
    quantize,
)
from tunelib.quantization.quantizers import (
    Int4WeightOnlyQATQuantizer,
    Int4WeightOnlyQuantizer,
    Int8DynActInt4WeightQATQuantizer,
    Int8DynActInt4WeightQuantizer,
    Quantizer,
)

__all__ = ["Int4WeightOnlyQATQuantizer", "Int4WeightOnlyQuantizer", "Int8DynActInt4WeightQATQuantizer",
           "Int8DynActInt4WeightQuantizer", "NF4Linear", "Quantizer", "check_shape", "dequantize", "is_nf4", "linear",
           "nf4_transform", "quantize"]
