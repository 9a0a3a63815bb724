"""One host sync per optimizer step: the loop reads the device once, whatever the accumulation,
logging or method; the loss finds its trained rows on the host; under torchrun the step's
numbers travel in two all-reduces (the CPU token counts, and the device's loss, flags and stop).

See tests/support/syncs.py for how a CPU run stands in for a GPU one.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
import torch

from support.recipes import finetune, tiny_model_folder, torchrun_finetune
from support.syncs import DeviceReads, probe_training
from tunelib.checkpoint import from_pretrained
from tunelib.training.loss import LinearCrossEntropyLoss

RECIPES = {"lora": ("lora_finetune_single_device", "llama3_2/1B_lora_tunelib"),
           "full": ("full_finetune_single_device", "llama3_2/1B_full_tunelib")}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("models"), "llama3_2")


@pytest.mark.parametrize(("method", "overrides"), [
    ("lora", ("gradient_accumulation_steps=2", "clip_grad_norm=1.0")),
    ("full", ("optimizer._component_=torch.optim.AdamW",)),
])
def test_one_device_read_per_optimizer_step_logging_included(tune, folder, tmp_path, monkeypatch, method, overrides):
    probe = probe_training(monkeypatch)
    result = finetune(tune, *RECIPES[method], folder, tmp_path / "out", "log_every_n_steps=1",
                      "max_steps_per_epoch=3", *overrides)
    assert result.code == 0, result.err
    assert [m["step"] for m in result.metrics] == [1, 2, 3]
    per_step = Counter(step for step, _, _ in probe.reads)
    assert per_step == {0: 1, 1: 1, 2: 1}, probe.reads  # (step, what, where) of each read
    assert {where.split(":")[0] for _, _, where in probe.reads} == {"loop.py"}


def test_the_loss_skips_untrained_rows_without_reading_the_device(hf_folder):
    model = from_pretrained(hf_folder("llama3")).float()
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    labels = ids.roll(-1, dims=1)
    labels[:, -1], labels[0, :5] = -100, -100  # the end, and a prompt
    batch = {"input_ids": ids, "labels": labels}
    loss_fn = LinearCrossEntropyLoss(num_output_chunks=2)
    host = loss_fn.host_inputs(batch)  # on the CPU labels, before the batch moves
    assert host["trained_rows"].tolist() == [i for i, y in enumerate(labels.flatten().tolist()) if y != -100]

    probe = DeviceReads()
    probe.mark(*model.parameters(), *model.buffers(), *batch.values(), *host.values())
    with probe:
        got = loss_fn(model, {**batch, **host})
        got.backward()
    assert probe.reads == []
    want = torch.nn.functional.cross_entropy(model(ids).flatten(0, 1), labels.flatten(), reduction="sum")
    torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-5, atol=1e-5)

    probe = DeviceReads()  # without host indices, a device has to find them itself
    probe.mark(*model.parameters(), *batch.values())
    with probe:
        loss_fn.host_inputs(batch)
    assert [what for _, what, _ in probe.reads] == ["aten.nonzero.default"]


@pytest.mark.slow
@pytest.mark.distributed
def test_two_all_reduces_per_step_under_torchrun(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELIB_ALLOW_MODULES", "support")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    record = tmp_path / "record"
    result = torchrun_finetune(2, "lora_finetune_distributed", "llama3_2/1B_lora_tunelib", folder, tmp_path / "out",
                               "log_every_n_steps=100", "max_steps_per_epoch=4",
                               f"loss={{_component_: support.syncs.ReductionCountingLoss, record_dir: {record}}}")
    assert result.code == 0, result.err[-3000:]
    for rank in (0, 1):
        seen = json.loads((record / f"rank{rank}.json").read_text())
        between = [b - a for a, b in zip(seen, seen[1:])]
        # Each step: one for the CPU token counts at its start, one for the loss, the non-finite
        # flags and the stop flag at its end (the logged last step adds one for peak memory).
        assert between == [2, 2, 2], seen
