"""Post-training weight-only quantization of a model's linear weights, through torchao.

    config = torchao_config("int8")
    tensors = quantize_weights(hf_tensors, config)     # decoder-layer linears become torchao tensors

Schemes:
    int8   one int8 per weight and one scale per output row (torchao Int8WeightOnlyConfig);
           runs on CPU and CUDA; about half the bytes of bf16.
    int4   4 bits per weight, a scale and zero point per group of `group_size` inputs
           (torchao Int4WeightOnlyConfig, tinygemm packing); CUDA only, bf16 only.

Only the linear layers inside decoder layers are quantized; the embedding, the output layer
and the norms keep their precision, as transformers' TorchAoConfig does by default.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from tunelib.errors import ConfigError
from tunelib.quantization.nf4 import _quiet_import

SCHEMES = ("int8", "int4")
INT4_GROUP_SIZES = (32, 64, 128, 256)
_DECODER_WEIGHT = re.compile(r"^model\.layers\.\d+\..+\.weight$")


def check_scheme(scheme: str, group_size: int, device: torch.device, dtype: torch.dtype | None,
                 fused_projections: bool = False) -> None:
    """Refuse a scheme this machine, dtype or model cannot run, before anything is loaded.

    Raises:
        ConfigError: an unknown scheme, int4 without CUDA or bf16, a bad group size.
    """
    if scheme not in SCHEMES:
        raise ConfigError(f"scheme={scheme!r}; use one of {', '.join(SCHEMES)}")
    if scheme != "int4":
        return
    if device.type != "cuda":
        raise ConfigError("scheme=int4 needs a CUDA GPU (torchao's int4 weight-only kernels run only there); "
                          "on this machine use scheme=int8")
    if dtype != torch.bfloat16:
        raise ConfigError("scheme=int4 works in bf16 only (torchao's tinygemm kernels); set dtype=bf16")
    if group_size not in INT4_GROUP_SIZES:
        raise ConfigError(f"group_size={group_size}; int4 takes one of {', '.join(map(str, INT4_GROUP_SIZES))}")
    if fused_projections:
        # Loading would have to cut packed int4 rows apart, which torchao's packing does not allow.
        raise ConfigError("scheme=int4 is not supported for models whose checkpoints fuse projections "
                          "(Phi-3, Phi-4); use scheme=int8")


def torchao_config(scheme: str, group_size: int = 128):
    """The torchao config object of a scheme (see the module docs)."""
    with _quiet_import():  # the same optional-kernel warnings nf4 silences
        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig
    # set_inductor_config=False: quantizing should not change torch.compile settings of the process.
    if scheme == "int8":
        return Int8WeightOnlyConfig(set_inductor_config=False)
    return Int4WeightOnlyConfig(group_size=group_size, int4_packing_format="tile_packed_to_4d",
                                set_inductor_config=False)


def is_quantized_weight(key: str, tensor: torch.Tensor) -> bool:
    """True for the checkpoint keys this module quantizes: 2-D weights inside decoder layers."""
    return tensor.dim() == 2 and _DECODER_WEIGHT.match(key) is not None


def quantize_weights(tensors: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """A copy of `tensors` (checkpoint keys) with every decoder-layer linear weight quantized.

    Each weight is quantized where it is (put the tensors on CUDA for int4). A weight torchao
    cannot take with this config (e.g. an input size that is not a multiple of the int4
    group size) stays as it was.
    """
    return {key: _quantize(t, config) if is_quantized_weight(key, t) else t for key, t in tensors.items()}


def _quantize(weight: torch.Tensor, config) -> torch.Tensor:
    from torchao.quantization import quantize_

    # torchao quantizes modules, so the weight is lent to a Linear that owns nothing else.
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    linear.weight = nn.Parameter(weight.detach(), requires_grad=False)
    quantize_(linear, config)
    return linear.weight.detach()


def is_torchao_tensor(tensor: torch.Tensor) -> bool:
    """True for a torchao quantized tensor (a subclass of torch.Tensor), False for a plain one."""
    return type(tensor) not in (torch.Tensor, nn.Parameter) and type(tensor).__module__.startswith("torchao")
