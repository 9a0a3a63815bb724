"""enable_activation_offloading: saved activations leave the device in forward and come back,
unchanged, in backward.

The bookkeeping (what is offloaded, what comes back) runs on CPU with a mover that copies
into other CPU tensors; the CUDA mover's tests are marked `gpu` and skip without CUDA.
"""

from __future__ import annotations

import pytest
import torch

from support.recipes import finetune, tiny_model_folder
from tunelib.models import CausalLM, DecoderConfig
from tunelib.training import LinearCrossEntropyLoss, transforms

LAYERS, HIDDEN, BATCH, SEQ = 3, 64, 2, 16
LAYER_INPUT_BYTES = BATCH * SEQ * HIDDEN * 4  # one layer's fp32 input (B, T, hidden)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="activation offloading moves CUDA memory")


class CopyMover:
    """Stands in for the GPU-to-CPU copy: each offloaded tensor becomes a separate CPU copy,
    and backward gets the copy back, never the original."""

    device_type = "cpu"

    def __init__(self):
        self.received: list[torch.Tensor] = []  # what was handed over (kept here only for the checks)
        self.restored = 0

    def offload(self, tensor: torch.Tensor) -> torch.Tensor:
        self.received.append(tensor)
        return tensor.detach().clone()

    def prefetch(self, handle: torch.Tensor) -> None:
        pass

    def restore(self, handle: torch.Tensor) -> torch.Tensor:
        self.restored += 1
        return handle


def tiny_model(seed: int = 0) -> CausalLM:
    torch.manual_seed(seed)
    config = DecoderConfig(architecture="LlamaForCausalLM", vocab_size=128, hidden_size=HIDDEN,
                           intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4,
                           num_key_value_heads=2)
    model = CausalLM(config)
    for p in model.parameters():  # a fresh RMSNorm is the identity; random weights test more
        torch.nn.init.normal_(p, std=0.05)
    return model


def batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 128, (BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "labels": ids}


def loss_and_grads(model: CausalLM) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    loss = LinearCrossEntropyLoss()(model, batch())
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters()}


def offloaded_model(min_bytes: int = 0, checkpointing: bool = True) -> tuple[CausalLM, CopyMover]:
    model, mover = tiny_model(), CopyMover()
    if checkpointing:
        transforms.activation_checkpointing(model)
    transforms.activation_offloading(model, torch.device("cpu"), mover=mover, min_bytes=min_bytes)
    return model, mover


def test_loss_and_gradients_are_unchanged():
    reference = tiny_model()
    transforms.activation_checkpointing(reference)
    want_loss, want_grads = loss_and_grads(reference)
    model, mover = offloaded_model()
    loss, grads = loss_and_grads(model)
    assert torch.equal(loss, want_loss)
    assert all(torch.equal(grads[name], want_grads[name]) for name in want_grads)
    # The token ids (for the embedding's backward) and each checkpointed layer's input left and
    # came back; the final norm's tensors stayed, since backward needs them first.
    shapes = [tuple(t.shape) for t in mover.received]
    assert shapes == [(BATCH, SEQ)] + [(BATCH, SEQ, HIDDEN)] * LAYERS
    assert mover.restored == len(shapes)


def test_parameters_and_views_of_them_are_never_offloaded():
    model, mover = offloaded_model(checkpointing=False)  # without checkpointing, linears save their weights
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        tiny_model().hidden(batch()["input_ids"])
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    assert any(isinstance(t, torch.nn.Parameter) or isinstance(t._base, torch.nn.Parameter) for t in saved)
    loss_and_grads(model)
    assert len(mover.received) > LAYERS
    assert not any(t.untyped_storage().data_ptr() in weights for t in mover.received)


def test_tensors_under_min_bytes_stay():
    model, mover = offloaded_model(min_bytes=LAYER_INPUT_BYTES)
    loss_and_grads(model)
    assert [tuple(t.shape) for t in mover.received] == [(BATCH, SEQ, HIDDEN)] * LAYERS  # not the token ids


def test_nothing_is_offloaded_without_gradients():
    model, mover = offloaded_model()
    with torch.no_grad():
        model(batch()["input_ids"])
    assert mover.received == []


@pytest.mark.slow
def test_compiled_layers_give_the_same_loss_and_gradients():
    reference = tiny_model()
    transforms.activation_checkpointing(reference)
    want_loss, want_grads = loss_and_grads(reference)
    model, mover = offloaded_model()
    transforms.compile_layers(model)
    loss, grads = loss_and_grads(model)
    assert loss.item() == pytest.approx(want_loss.item(), rel=1e-6)
    assert all(torch.allclose(grads[name], want_grads[name], atol=1e-6) for name in want_grads)
    assert mover.received and mover.restored == len(mover.received)


LORA = ("lora_finetune_single_device", "llama3_2/1B_lora_tunelib")
FAST = ("lr_scheduler.num_warmup_steps=0", "optimizer.lr=3e-3", "enable_activation_checkpointing=True")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("models"), "llama3_2")


def test_refused_on_cpu_with_one_line(tune, folder, tmp_path):
    result = finetune(tune, *LORA, folder, tmp_path / "out", *FAST, "enable_activation_offloading=True")
    assert result.code == 2 and "Traceback" not in result.err
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert lines == ["tune: error: enable_activation_offloading moves activations from GPU to CPU memory; "
                     "it needs device=cuda"]
    assert not (tmp_path / "out/final").exists()


# -- CUDA ------------------------------------------------------------------------------------


def cuda_steps(offload: bool, steps: int = 3) -> tuple[list[float], int, int]:
    """Losses of a few SGD steps of a model big enough for its layer inputs to matter, with the
    peak allocated CUDA memory and the bytes offloaded per step."""
    torch.manual_seed(0)
    config = DecoderConfig(architecture="LlamaForCausalLM", vocab_size=1024, hidden_size=2048,
                           intermediate_size=5632, num_hidden_layers=8, num_attention_heads=16)
    model = CausalLM(config).cuda()
    # Only the embedding and norms train: backward runs through every layer, but no large weight
    # gradient hides the layer inputs in the peak.
    for name, p in model.named_parameters():
        p.requires_grad_("norm" in name or "embed" in name)
    transforms.activation_checkpointing(model)
    offloader = transforms.activation_offloading(model, torch.device("cuda")) if offload else None
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    ids = torch.randint(0, 1024, (8, 1024), generator=torch.Generator().manual_seed(1)).cuda()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    losses = []
    for _ in range(steps):
        loss = LinearCrossEntropyLoss()(model, {"input_ids": ids, "labels": ids})
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    torch.cuda.synchronize()
    moved = offloader.offloaded_bytes // steps if offloader else 0
    return losses, torch.cuda.max_memory_allocated(), moved


@pytest.mark.gpu
@needs_cuda
def test_cuda_offloading_keeps_the_losses_and_lowers_peak_memory():
    want_losses, plain_peak, _ = cuda_steps(offload=False)
    losses, peak, moved = cuda_steps(offload=True)
    assert losses == pytest.approx(want_losses, rel=1e-5)
    layer_input = 8 * 1024 * 2048 * 4
    assert moved >= 8 * layer_input
    # Without offloading every layer's input is alive when backward starts; with it, a few at most.
    assert peak < plain_peak - 4 * layer_input


@pytest.mark.gpu
@needs_cuda
def test_cuda_run_with_offloading_gives_the_same_losses(tune, folder, tmp_path, monkeypatch):
    on_cuda = ("device=cuda", *FAST)
    baseline = finetune(tune, *LORA, folder, tmp_path / "base", *on_cuda)
    assert baseline.code == 0, baseline.err
    made = []
    plain = transforms.activation_offloading

    def everything(model, device):  # the tiny model's activations are all under the default min_bytes
        made.append(plain(model, device, min_bytes=0))
        return made[-1]

    monkeypatch.setattr(transforms, "activation_offloading", everything)
    result = finetune(tune, *LORA, folder, tmp_path / "out", *on_cuda, "enable_activation_offloading=True")
    assert result.code == 0, result.err
    assert made and made[0].offloaded > 0
    assert result.losses == pytest.approx(baseline.losses, rel=1e-5)
