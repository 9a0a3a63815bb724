"""`tune run full_finetune_single_device` on tiny models: HF folder out, identity at lr=0,
optimizer-in-backward, torchao's 8-bit AdamW, validation loss, resume."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from support.models import load_hf_model
from support.recipes import data_file, finetune, tiny_model_folder

FULL = ("full_finetune_single_device", "llama3_1/8B_full_tunelib")
ADAMW = ("optimizer._component_=torch.optim.AdamW", "optimizer_in_bwd=False", "optimizer.lr=1e-3")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("models"), "llama3_1")


def test_full_finetune_writes_an_hf_folder_with_our_logits(tune, folder, tmp_path):
    import tunelib.checkpoint

    result = finetune(tune, *FULL, folder, tmp_path / "out", *ADAMW)
    assert result.code == 0, result.err
    assert result.losses[-1] < result.losses[0]
    final = tmp_path / "out/final"
    ids = torch.randint(0, 700, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = load_hf_model(final)(ids).logits
        ours = tunelib.checkpoint.from_pretrained(final, dtype=torch.float32)(ids)
        base = load_hf_model(folder)(ids).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    assert (theirs - base).abs().max() > 1e-3
    assert (final / "tokenizer.json").is_file() and (final / "generation_config.json").is_file()


def test_zero_learning_rate_writes_the_input_weights(tune, folder, tmp_path):
    result = finetune(tune, *FULL, folder, tmp_path / "out", *ADAMW, "optimizer.lr=0")
    assert result.code == 0, result.err
    before, after = load_file(folder / "model.safetensors"), load_file(tmp_path / "out/final/model.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_optimizer_in_backward_equals_stepping_after_backward(tune, folder, tmp_path):
    after = finetune(tune, *FULL, folder, tmp_path / "a", *ADAMW)
    inside = finetune(tune, *FULL, folder, tmp_path / "b", *ADAMW, "optimizer_in_bwd=True")
    assert after.code == 0 and inside.code == 0, after.err + inside.err
    assert inside.losses == pytest.approx(after.losses, abs=1e-5)


def test_optimizer_in_backward_refuses_accumulation(tune, folder, tmp_path):
    result = finetune(tune, *FULL, folder, tmp_path / "out", "gradient_accumulation_steps=2")
    assert result.code == 2 and "optimizer_in_bwd" in result.err
    assert not (tmp_path / "out/final").exists()


@pytest.mark.slow
def test_shipped_full_config_runs_with_torchao_8bit_adamw(tune, tmp_path):
    # torchao's 8-bit AdamW quantises states in blocks of 256: give it weights that size.
    folder = tiny_model_folder(tmp_path / "m", "llama3_1", hidden_size=128, intermediate_size=256)
    result = finetune(tune, *FULL, folder, tmp_path / "out", "optimizer.lr=1e-3")
    assert result.code == 0, result.err
    assert result.losses[-1] < result.losses[0]


def test_validation_loss_is_logged_once_per_evaluation(tune, folder, tmp_path):
    val = data_file(tmp_path / "val")
    result = finetune(tune, *FULL, folder, tmp_path / "out", *ADAMW, "+dataset_val._component_=tunelib.data.alpaca_dataset",
                      "+dataset_val.source=json", f"+dataset_val.data_files={val}", "run_val_every_n_steps=2")
    assert result.code == 0, result.err
    val_steps = [m["step"] for m in result.metrics if "val_loss" in m]
    assert val_steps == [2, 4]  # the last step's evaluation is also the final one, logged once


def test_resume_continues_exactly(tune, folder, tmp_path):
    import shutil

    straight = finetune(tune, *FULL, folder, tmp_path / "a", *ADAMW, "save_every_n_steps=2", "seed=3")
    assert straight.code == 0, straight.err
    shutil.copytree(tmp_path / "a/step_2", tmp_path / "b/step_2")  # as if the run had died after step 2
    resumed = finetune(tune, *FULL, folder, tmp_path / "b", *ADAMW, "save_every_n_steps=2", "seed=3",
                       "resume_from_checkpoint=True")
    assert resumed.code == 0, resumed.err
    assert "Resuming from" in resumed.out and "step 2 of 4" in resumed.out
    assert [m["step"] for m in resumed.metrics] == [3, 4]
    assert resumed.losses == straight.losses[2:]
    a, b = load_file(tmp_path / "a/final/model.safetensors"), load_file(tmp_path / "b/final/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
