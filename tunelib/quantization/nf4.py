"""NF4 (4-bit NormalFloat) base weights for QLoRA, through torchao.

torchao moved its NF4 tensor in 0.18 (`torchao.dtypes.nf4tensor` is gone), and importing it
prints warnings about optional CUDA kernels on CPU machines. This module is the one place that
imports it: both paths are tried and the noise is silenced, so nothing else in tunelib names
torchao's internals.

A weight quantized here is a frozen `NF4Tensor` parameter; `linear` multiplies by it without
ever giving it a gradient, and `dequantize` gives the full-precision weight back (for DoRA
norms, merging and saving).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import warnings
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from tunelib.errors import ConfigError

# torchao's defaults: one absmax per 64 weights, and those absmaxes quantized in groups of 256.
BLOCK_SIZE = 64
SCALER_BLOCK_SIZE = 256
NUMEL_MULTIPLE = BLOCK_SIZE * SCALER_BLOCK_SIZE

# (module, {our name: attribute}) in the order tried: torchao >= 0.18 first, then <= 0.17.
IMPORT_PATHS = (
    ("torchao.quantization", {"NF4Tensor": "NF4Tensor", "to_nf4": "to_nf4"}),
    ("torchao.quantization.quantize_.workflows.nf4.nf4_tensor", {"linear_nf4": "linear_nf4"}),
    ("torchao.dtypes.nf4tensor", {"NF4Tensor": "NF4Tensor", "to_nf4": "to_nf4", "linear_nf4": "linear_nf4"}),
)

# Loggers that torchao's import writes to: missing CUDA kernels, deprecated pytree enums.
_NOISY_LOGGERS = ("torchao", "torch.utils._pytree")


@contextlib.contextmanager
def _quiet_import():
    """Silence torchao's import-time warnings, which are about kernels QLoRA does not use."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _load_api(paths=IMPORT_PATHS) -> SimpleNamespace:
    """Collect NF4Tensor, to_nf4 and linear_nf4 from the first module of `paths` that has each."""
    found: dict[str, object] = {}
    tried = []
    with _quiet_import():
        for module_name, names in paths:
            missing = {ours: attr for ours, attr in names.items() if ours not in found}
            if not missing:
                continue
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                tried.append(module_name)
                continue
            for ours, attr in missing.items():
                if hasattr(module, attr):
                    found[ours] = getattr(module, attr)
            tried.append(module_name)
    wanted = {ours for _, names in paths for ours in names}
    if wanted - found.keys():
        raise ImportError(
            f"QLoRA needs torchao's NF4 tensor ({', '.join(sorted(wanted - found.keys()))} not found in "
            f"{', '.join(tried)}); install torchao >= 0.16 (`pip install torchao`)"
        )
    return SimpleNamespace(**found)


# Set by the first `api()` call. A plain global rather than `functools.cache`: torch.compile
# reads a global as a constant, but traces into a cached function (and on into the import's
# logging), which broke the compiled graph at every NF4 linear.
_API: SimpleNamespace | None = None


def api() -> SimpleNamespace:
    """torchao's `NF4Tensor`, `to_nf4` and `linear_nf4`, imported once and quietly.

    Raises ImportError (naming what is missing) when torchao has no NF4 tensor."""
    global _API
    if _API is None:
        _API = _load_api()
    return _API


def is_nf4(tensor) -> bool:
    """Whether `tensor` is a torchao NF4 tensor (torchao is not imported to answer no)."""
    return type(tensor).__name__ == "NF4Tensor" and isinstance(tensor, api().NF4Tensor)


def check_shape(name: str, shape) -> None:
    """Raise ConfigError unless a weight of `shape` can be stored in NF4 with torchao's blocks.

    torchao needs a 2-D weight whose element count is a multiple of 64 × 256 = 16384; stacked
    expert weights (E, out, in) are stored as (E·out, in).
    """
    shape = tuple(shape)
    numel = 1
    for size in shape:
        numel *= size
    if len(shape) not in (2, 3) or numel % NUMEL_MULTIPLE:
        raise ConfigError(
            f"quantize_base: {name} has shape {shape} ({numel} elements), but torchao's NF4 needs a 2-D "
            f"weight whose size is a multiple of {NUMEL_MULTIPLE} (blocks of {BLOCK_SIZE} × "
            f"{SCALER_BLOCK_SIZE}); use a larger model or set quantize_base=False"
        )


def quantize(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Return `tensor` as a frozen NF4 tensor; `name` is used in the error if its shape cannot be.

    A stacked expert weight (E, out, in) becomes an NF4 tensor of shape (E·out, in): torchao's
    NF4 is 2-D, and its blocks run over the memory in the same order either way."""
    check_shape(name, tensor.shape)
    if tensor.dim() == 3:
        tensor = tensor.flatten(0, 1)
    return api().to_nf4(tensor.detach().contiguous(), BLOCK_SIZE, SCALER_BLOCK_SIZE)


def dequantize(tensor: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Full-precision copy of an NF4 tensor (in its original dtype unless `dtype`); others as they are."""
    if is_nf4(tensor):
        tensor = tensor.get_original_weight()
    return tensor if dtype is None else tensor.to(dtype)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear` that also takes an NF4 weight, which then gets no gradient (QLoRA's frozen base)."""
    if not is_nf4(weight):
        return F.linear(x, weight, bias)
    out = api().linear_nf4(x, weight)
    return out if bias is None else out + bias


class NF4Linear(nn.Linear):
    """A frozen `nn.Linear` whose weight becomes NF4 once real values arrive.

    It keeps the `weight`/`bias` names, so checkpoints load unchanged. Built on the meta
    device, its weight is quantized by `nf4_transform` while loading; built from real weights,
    `from_linear` quantizes at once.
    """

    quantize_base = True

    @classmethod
    def from_linear(cls, linear: nn.Linear, name: str) -> NF4Linear:
        """Turn `linear` (named `name` in its model, for errors) into an NF4Linear sharing its tensors."""
        check_shape(f"{name}.weight", linear.weight.shape)
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.in_features, module.out_features = linear.in_features, linear.out_features
        module.weight = linear.weight
        module.bias = linear.bias
        quantize_weight_in_place(module, "weight", f"{name}.weight")
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def quantize_weight_in_place(module: nn.Module, attr: str, name: str) -> None:
    """Replace `module.<attr>` by a frozen NF4 parameter, unless it is still on the meta device."""
    weight = getattr(module, attr)
    if weight.is_meta or is_nf4(weight):
        return
    setattr(module, attr, nn.Parameter(quantize(name, weight), requires_grad=False))


class NF4Transform:
    """`transform(name, tensor)` for a streaming loader: the weights named in `names` come back
    as NF4 tensors, every other tensor unchanged."""

    def __init__(self, names: set[str]):
        self.names = names

    def __call__(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        return quantize(name, tensor) if name in self.names else tensor


def nf4_transform(model: nn.Module) -> NF4Transform | None:
    """The loader's transform for `model`, or None if `model` has no NF4 module.

    The loader calls it before assigning each weight (already in the training dtype and on the
    training device), on the whole weight: torchao's double quantization subtracts the mean of
    all of a weight's block scales, so a piece quantized alone would differ from the same rows
    of the weight quantized whole.
    """
    names = {
        f"{module_name}.weight" if module_name else "weight"
        for module_name, module in model.named_modules()
        if getattr(module, "quantize_base", False)
    }
    return NF4Transform(names) if names else None
