"""QAT's fake-quantized linears: what training simulates is what `tune run quantize` writes, names
and tensors never change, LoRA's adapter path stays exact, and unusable settings are one-line errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tunelib.errors import ConfigError
from tunelib.peft.lora import LoRALinear, LoraSpec
from tunelib.quantization import (
    Int4WeightOnlyQATQuantizer,
    Int8DynActInt4WeightQATQuantizer,
    Int8DynActInt4WeightQuantizer,
    qat,
)

IDS = torch.randint(0, 120, (2, 10), generator=torch.Generator().manual_seed(0))


def tiny(*linears: nn.Module) -> nn.Module:
    """A module tree with Hugging Face's decoder-layer names around `linears`, plus an output layer."""
    root = nn.Module()
    root.model = nn.Module()
    root.model.layers = nn.ModuleList([nn.Module()])
    for i, linear in enumerate(linears):
        setattr(root.model.layers[0], f"proj{i}", linear)
    root.lm_head = nn.Linear(64, 8)
    return root


@pytest.fixture
def model(hf_folder):
    import tunelib.checkpoint

    return tunelib.checkpoint.from_pretrained(hf_folder("llama3_1"), dtype=torch.float32)


def test_fake_quantized_linear_computes_what_the_quantized_linear_computes():
    from torchao.quantization import quantize_

    torch.manual_seed(0)
    linear, x = nn.Linear(64, 48, bias=False), torch.randn(3, 5, 64)
    quantizer = Int8DynActInt4WeightQATQuantizer(groupsize=32)
    quantized = nn.Linear(64, 48, bias=False)
    quantized.weight = nn.Parameter(linear.weight.detach().clone(), requires_grad=False)
    quantize_(quantized, quantizer.torchao_config())
    root = qat.prepare(tiny(linear), quantizer)
    with torch.no_grad():
        fake, real, plain = root.model.layers[0].proj0(x), quantized(x), F.linear(x, linear.weight)
    assert torch.equal(fake, real)
    assert (fake - plain).abs().max() > 1e-3


def test_prepare_keeps_names_and_tensors_and_off_is_the_plain_model(model):
    before = dict(model.named_parameters())
    with torch.no_grad():
        plain = model(IDS)
    qat.prepare(model, Int8DynActInt4WeightQATQuantizer(groupsize=32))
    assert dict(model.named_parameters()) == before  # the same names, the very same tensors
    assert model.state_dict().keys() == before.keys()  # nothing added either
    assert isinstance(model.model.layers[0].self_attn.q_proj, nn.Linear)
    assert not qat.is_prepared(model.lm_head) and qat.is_prepared(model.model.layers[1].mlp)
    with torch.no_grad():
        on = model(IDS)
        qat.set_fake_quant(model, False)
        off = model(IDS)
    assert torch.equal(off, plain)
    assert (on - plain).abs().max() > 1e-3
    qat.remove(model)
    assert not qat.is_prepared(model) and type(model.model.layers[0].self_attn.q_proj) is nn.Linear
    with torch.no_grad():
        assert torch.equal(model(IDS), plain)


def test_gradients_reach_every_weight_through_the_rounding(model):
    qat.prepare(model, Int4WeightOnlyQATQuantizer(groupsize=32))
    model(IDS).logsumexp(-1).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_lora_base_is_fake_quantized_and_its_adapter_is_not():
    torch.manual_seed(0)
    lora = LoRALinear.from_linear(nn.Linear(64, 32), LoraSpec(rank=4, alpha=8))
    lora.reset_adapter_parameters("cpu", torch.float32)
    nn.init.normal_(lora.lora_B.weight)
    x = torch.randn(2, 3, 64)
    quantizer = Int8DynActInt4WeightQATQuantizer(groupsize=32)
    qat.prepare(tiny(lora), quantizer)
    assert isinstance(lora, LoRALinear) and isinstance(lora.lora_A, nn.Linear)
    assert not isinstance(lora.lora_A, qat._FakeQuantized)  # the adapter inside is not a base linear
    activation, weight = (q.__class__.from_config(c) if c is not None else None
                          for q, c in zip((lora.activation_fake_quantizer, lora.weight_fake_quantizer),
                                          quantizer.fake_quantize_configs()))
    with torch.no_grad():
        expected = F.linear(activation(x), weight(lora.weight), lora.bias) + lora.scaling * lora.lora_B(lora.lora_A(x))
        torch.testing.assert_close(lora(x), expected)


@pytest.mark.parametrize("name", ["Int8DynActInt4WeightQATQuantizer", "Int8DynActInt4WeightQATQuantizerModuleSwap",
                                  "Int8DynActInt4WeightQuantizer"])
def test_torchtune_quantizer_names_build_tunelib_quantizers(name):
    from tunelib.config import instantiate

    node = {"_component_": f"torchtune.training.quantization.{name}", "groupsize": 64}
    assert instantiate(node).torchao_config() == Int8DynActInt4WeightQuantizer(64).torchao_config()


def test_the_plain_and_qat_names_are_one_quantization():
    assert Int8DynActInt4WeightQuantizer(64).torchao_config() == Int8DynActInt4WeightQATQuantizer(64).torchao_config()


@pytest.mark.parametrize("make, message", [
    (lambda: Int8DynActInt4WeightQATQuantizer(groupsize=48), "groupsize=48 does not divide the 64 inputs of "
                                                             "model.layers.0.proj0; use quantizer.groupsize=64"),
    (lambda: Int4WeightOnlyQATQuantizer(groupsize=16), "int4 weight-only takes one of 32, 64, 128, 256"),
    (lambda: Int8DynActInt4WeightQATQuantizer(groupsize=0), "positive whole number"),
])
def test_a_group_size_that_cannot_work_is_refused_in_one_line(make, message):
    with pytest.raises(ConfigError, match=message):
        qat.prepare(tiny(nn.Linear(64, 32)), make())


def test_nf4_base_weights_and_dora_are_refused():
    quantizer = Int8DynActInt4WeightQATQuantizer(groupsize=32)
    nf4_base = LoRALinear.from_linear(nn.Linear(64, 32, device="meta"), LoraSpec(4, 8), quantize_base=True)
    with pytest.raises(ConfigError, match="quantize_base=False"):
        qat.prepare(tiny(nf4_base), quantizer)
    from tunelib.peft.dora import DoRALinear

    with pytest.raises(ConfigError, match="use_dora=False"):
        qat.prepare(tiny(DoRALinear.from_linear(nn.Linear(64, 32, device="meta"), LoraSpec(4, 8))), quantizer)


def test_a_linear_with_a_forward_of_its_own_is_refused():
    class Scaled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    with pytest.raises(ConfigError, match="cannot fake-quantize model.layers.0.proj0, a Scaled"):
        qat.prepare(tiny(Scaled(64, 32)), Int8DynActInt4WeightQATQuantizer(groupsize=32))


def test_the_step_hook_turns_fake_quantization_on_after_n_steps(model, capsys):
    from types import SimpleNamespace

    qat.prepare(model, Int8DynActInt4WeightQATQuantizer(groupsize=32), enabled=False)
    hook = qat.FakeQuantAfter(2)
    run = SimpleNamespace(model=model, state=SimpleNamespace(step=0), dist=SimpleNamespace(say=print))
    states = []
    for step in range(4):
        run.state.step = step
        hook(run)
        states.append(model.model.layers[0].mlp.up_proj.weight_fake_quantizer.enabled)
    assert states == [False, False, True, True]
    assert "Step 3: fake quantization on" in capsys.readouterr().out
