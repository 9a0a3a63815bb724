"""Quantized base weights. Today: NF4 through torchao, the frozen base of QLoRA.

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

__all__ = ["NF4Linear", "check_shape", "dequantize", "is_nf4", "linear", "nf4_transform", "quantize"]
