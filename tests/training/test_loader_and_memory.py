"""Loader and memory options: loader workers (same losses, exact resume), pinned memory only
where it means something, selective activation checkpointing (every k-th layer recomputed,
same losses), expandable segments for CUDA runs, and a peak memory that shows training, not
loading."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch

from support.models import make_hf_model_folder
from support.recipes import finetune, tiny_model_folder, words
from tunelib.checkpoint import from_pretrained
from tunelib.training import HFCheckpointer
from tunelib.training import memory, transforms
from tunelib.training.loss import LinearCrossEntropyLoss
from tunelib.training.runtime import cuda_allocator_env

LORA = ("lora_finetune_single_device", "llama3_2/1B_lora_tunelib")
FAST = ("lr_scheduler.num_warmup_steps=0", "optimizer.lr=3e-3")
# Dropout draws random numbers every step and accumulation spreads a step over two batches; 3
# steps an epoch, so the resume below crosses into the second epoch.
EXACT = (*FAST, "model.lora_dropout=0.2", "gradient_accumulation_steps=2", "epochs=2", "max_steps_per_epoch=3",
         "save_every_n_steps=2")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("models"), "llama3_2")


@pytest.mark.slow
def test_loader_workers_give_the_same_losses_and_resume_exactly(tune, folder, tmp_path):
    plain = finetune(tune, *LORA, folder, tmp_path / "plain", *EXACT)
    workers = finetune(tune, *LORA, folder, tmp_path / "workers", *EXACT, "num_workers=2")
    assert plain.code == 0 and workers.code == 0, plain.err + workers.err
    assert len(plain.losses) == 6 and workers.losses == plain.losses  # bit for bit
    shutil.copytree(workers.output_dir / "step_2", tmp_path / "resumed/step_2")
    resumed = finetune(tune, *LORA, folder, tmp_path / "resumed", *EXACT, "num_workers=2", "resume_from_checkpoint=True")
    assert resumed.code == 0, resumed.err
    assert "Resuming from" in resumed.out and resumed.losses == plain.losses[2:]


@pytest.mark.parametrize("overrides, message", [
    (("pin_memory=True",), "pin_memory=True speeds up copies to a GPU, but device is cpu"),
    (("num_workers=-1",), "num_workers=-1; use 0 or more"),
    (("enable_activation_checkpointing=True", "ac_mode=selective"), "ac_mode=selective needs ac_option=k"),
    (("ac_mode=selective", "ac_option=2"), "set enable_activation_checkpointing=True"),
    (("enable_activation_checkpointing=True", "ac_option=2"), "ac_option=2 is read only with ac_mode=selective"),
    (("enable_activation_checkpointing=True", "ac_mode=selective", "ac_option=0"), "ac_option=0; use 1 or more"),
])
def test_loader_and_checkpointing_settings_that_cannot_work_are_refused(tune, folder, tmp_path, overrides, message):
    result = finetune(tune, *LORA, folder, tmp_path / "out", *overrides)
    assert result.code == 2 and message in result.err and "Traceback" not in result.err, result.err
    code, _, err = tune("validate", LORA[1], "--recipe", LORA[0], *words(folder, tmp_path / "v", None, overrides))
    assert code == 2 and message in err


def _mlp_calls_in_a_step(model: torch.nn.Module, batch: dict) -> tuple[list[int], torch.Tensor, dict]:
    """How often each layer's MLP ran in forward and backward (twice: recomputed), the loss, the gradients."""
    calls = [0] * len(model.model.layers)
    # Counted as the MLP starts: recomputation stops once backward has what it needs, before it returns.
    for i, layer in enumerate(model.model.layers):
        layer.mlp.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    loss = LinearCrossEntropyLoss()(model, batch)
    loss.backward()
    return calls, loss.detach(), {n: p.grad for n, p in model.named_parameters()}


def test_selective_checkpointing_recomputes_every_kth_layer_with_the_same_gradients(tmp_path):
    model = from_pretrained(make_hf_model_folder(tmp_path / "m", "llama3", num_hidden_layers=4)).float()
    model.requires_grad_(True)
    ids = torch.randint(0, model.config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids.roll(-1, dims=1)}
    plain, every_2nd, full = model, copy.deepcopy(model), copy.deepcopy(model)
    assert transforms.activation_checkpointing(every_2nd, every=2) == [1, 3]
    assert transforms.activation_checkpointing(full) == [0, 1, 2, 3]
    want_calls, want_loss, want_grads = _mlp_calls_in_a_step(plain, batch)
    assert want_calls == [1, 1, 1, 1]
    for checkpointed, calls in ((every_2nd, [1, 2, 1, 2]), (full, [2, 2, 2, 2])):
        got_calls, loss, grads = _mlp_calls_in_a_step(checkpointed, batch)
        assert got_calls == calls
        assert torch.equal(loss, want_loss) and all(torch.equal(grads[n], want_grads[n]) for n in want_grads)


def test_selective_checkpointing_in_a_run_gives_the_same_losses(tune, folder, tmp_path):
    plain = finetune(tune, *LORA, folder, tmp_path / "plain", *FAST)
    selective = finetune(tune, *LORA, folder, tmp_path / "selective", *FAST, "enable_activation_checkpointing=True",
                         "ac_mode=selective", "ac_option=2")
    assert plain.code == 0 and selective.code == 0, selective.err
    assert selective.losses == pytest.approx(plain.losses, abs=1e-6)


@pytest.mark.parametrize("environ, device, gpu, want", [
    ({}, "cuda", True, {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}),
    ({}, "cuda:1", True, {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}),
    ({}, "auto", True, {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}),
    ({}, "auto", False, {}),
    ({}, "cpu", True, {}),
    ({"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128"}, "cuda", True, {}),
    ({"PYTORCH_CUDA_ALLOC_CONF": ""}, "cuda", True, {}),
    ({"PYTORCH_ALLOC_CONF": "expandable_segments:False"}, "cuda", True, {}),
])
def test_cuda_runs_get_expandable_segments_unless_the_user_chose(environ, device, gpu, want):
    assert cuda_allocator_env(environ, device, gpu) == want


def test_a_cpu_run_leaves_the_allocator_environment_alone(tune, folder, tmp_path, monkeypatch):
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    result = finetune(tune, *LORA, folder, tmp_path / "out", "max_steps_per_epoch=1")
    assert result.code == 0, result.err
    import os

    assert "PYTORCH_CUDA_ALLOC_CONF" not in os.environ


def _touch(gib: float) -> None:
    """Make the process hold `gib` more resident memory for a moment."""
    block = torch.ones(int(gib * memory.GIB) // 4)
    del block


def test_the_cpu_peak_can_be_reset():
    _touch(0.4)
    before = memory.peak_memory(torch.device("cpu"))["peak_memory_gib"]
    assert memory.reset_peak(torch.device("cpu"))
    assert memory.peak_memory(torch.device("cpu"))["peak_memory_gib"] < before - 0.3


def test_the_logged_peak_is_trainings_not_loadings(tune, folder, tmp_path, monkeypatch):
    load_model, seen = HFCheckpointer.load_model, {}

    def load_with_a_spike(self, *args, **kwargs):
        out = load_model(self, *args, **kwargs)
        _touch(0.5)  # what converting or quantizing weights may take for a moment
        seen["load"] = memory.peak_memory(torch.device("cpu"))["peak_memory_gib"]
        return out

    monkeypatch.setattr(HFCheckpointer, "load_model", load_with_a_spike)
    result = finetune(tune, *LORA, folder, tmp_path / "out", "max_steps_per_epoch=2")
    assert result.code == 0, result.err
    logged = [m["peak_memory_gib"] for m in result.metrics if "peak_memory_gib" in m]
    assert len(logged) == 2 and max(logged) < seen["load"] - 0.4
