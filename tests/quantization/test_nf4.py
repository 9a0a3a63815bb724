"""NF4 base weights through torchao: both import paths, quiet import, exact dequantised math."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tunelib.errors import ConfigError
from tunelib.quantization import NF4Linear, check_shape, dequantize, is_nf4, nf4_transform, quantize
from tunelib.quantization import nf4 as nf4_module

NEW_PATHS = nf4_module.IMPORT_PATHS[:2]
OLD_PATH = nf4_module.IMPORT_PATHS[2]


def test_the_torchao_018_path_is_found():
    api = nf4_module._load_api(NEW_PATHS)
    assert api.NF4Tensor.__module__.endswith("nf4_tensor")
    assert callable(api.to_nf4) and callable(api.linear_nf4)


def test_the_pre_018_path_is_used_when_the_new_one_is_missing(monkeypatch):
    real = nf4_module.api()
    old = types.ModuleType("torchao.dtypes.nf4tensor")  # what torchao <= 0.17 provides
    old.NF4Tensor, old.to_nf4, old.linear_nf4 = real.NF4Tensor, real.to_nf4, real.linear_nf4
    monkeypatch.setitem(sys.modules, "torchao.dtypes.nf4tensor", old)
    gone = [("torchao_removed.quantization", names) for _, names in NEW_PATHS]
    api = nf4_module._load_api((*gone, OLD_PATH))
    assert api.to_nf4 is real.to_nf4 and api.linear_nf4 is real.linear_nf4


def test_a_missing_torchao_is_a_clear_import_error():
    with pytest.raises(ImportError, match=r"QLoRA needs torchao's NF4 tensor .*pip install torchao"):
        nf4_module._load_api((("no_such_torchao", {"to_nf4": "to_nf4"}),))


def test_importing_torchao_prints_nothing():
    code = "from tunelib.quantization import nf4; nf4.api(); print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "ok\n"
    assert done.stderr == ""


def test_nf4_linear_equals_f_linear_with_the_dequantized_weight():
    torch.manual_seed(0)
    linear = nn.Linear(128, 256)
    layer = NF4Linear.from_linear(linear, "block.fc")
    assert is_nf4(layer.weight) and not layer.weight.requires_grad
    assert layer.bias is linear.bias
    x = torch.randn(3, 128, requires_grad=True)
    out = layer(x)
    weight = dequantize(layer.weight)
    assert weight.dtype == torch.float32
    assert torch.equal(out, F.linear(x, weight, linear.bias))
    # 4 bits per weight: close to the original, not equal.
    assert 0 < (weight - linear.weight).abs().max() < 0.3 * linear.weight.abs().max()
    out.sum().backward()
    torch.testing.assert_close(x.grad, weight.sum(0).expand(3, -1))


def test_shapes_torchao_cannot_hold_are_config_errors():
    check_shape("w", (128, 128))
    with pytest.raises(ConfigError, match=r"quantize_base: layer.weight has shape \(64, 32\) \(2048 elements\)"):
        check_shape("layer.weight", (64, 32))
    with pytest.raises(ConfigError, match="2-D weight"):
        quantize("norm.weight", torch.ones(16384))


def test_the_loader_transform_quantizes_only_nf4_module_weights():
    model = nn.Sequential(nn.Linear(128, 128), nn.Linear(128, 128))
    model[0] = NF4Linear.from_linear(model[0], "0")
    transform = nf4_transform(model)
    w = torch.randn(128, 128)
    assert is_nf4(transform("0.weight", w))
    assert transform("1.weight", w) is w and transform("0.bias", w[0]) is not None
    assert nf4_transform(nn.Sequential(nn.Linear(2, 2))) is None


def test_nf4_keeps_its_device_and_original_dtype():
    t = quantize("w", torch.randn(128, 128, dtype=torch.bfloat16))
    assert t.dtype == torch.bfloat16 and dequantize(t).dtype == torch.bfloat16
    assert is_nf4(t.to("cpu"))
    assert dequantize(t, torch.float32).dtype == torch.float32
