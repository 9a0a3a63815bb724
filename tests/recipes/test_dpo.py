"""`tune run lora_dpo_single_device` / `full_dpo_single_device` on tiny models: the first DPO loss
is ln 2, metrics under torchtune's and TRL's names, exact accumulation and resume, every loss
selectable, outputs that load in PEFT and transformers, and DPO learning the preferred answer."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from support.data import write_rows
from support.models import load_hf_model
from support.recipes import ROWS, finetune, tiny_model_folder

LORA_DPO = ("lora_dpo_single_device", "llama3_2/1B_lora_dpo")
FULL_DPO = ("full_dpo_single_device", "llama3_2/1B_full_dpo")
FAST = ("lr_scheduler.num_warmup_steps=0", "optimizer.lr=3e-3")
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
           "log_probs/chosen", "log_probs/rejected")


def pairs(rows=ROWS) -> list[dict]:
    """chosen: the row's own answer; rejected: the next row's answer (another question's)."""
    unique = [r for i, r in enumerate(rows) if r not in rows[:i]]
    out = []
    for i, row in enumerate(unique):
        other = unique[(i + 1) % len(unique)]
        prompt = f"{row['instruction']} {row['input']}".strip()
        out.append({"prompt": prompt, "chosen": row["output"], "rejected": other["output"]})
    return out * 4


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("models"), "llama3_2")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_rows(tmp_path_factory.mktemp("data") / "pairs.jsonl", pairs())


def dpo(tune, recipe, folder, out, data, *overrides):
    return finetune(tune, *recipe, folder, out, *overrides, data=data)


def test_lora_dpo_starts_at_ln2_and_logs_torchtunes_metrics(tune, folder, data, tmp_path):
    result = dpo(tune, LORA_DPO, folder, tmp_path / "out", data, *FAST)
    assert result.code == 0, result.err
    first = result.metrics[0]
    # The policy is the reference before the first update: every margin is 0, so -log sigmoid(0).
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["rewards/margins"] == pytest.approx(0, abs=1e-6)
    assert all(name in first for name in METRICS)
    # the console line says whether DPO is learning, not only the loss
    line = next(line for line in result.out.splitlines() if line.startswith("step 1/"))
    assert "loss=0.693" in line and "rewards/accuracies=0" in line and "rewards/margins=" in line, line
    assert result.losses[-1] < result.losses[0]
    assert (tmp_path / "out/final/adapter/adapter_config.json").is_file()


def test_lora_dpo_adapter_loads_in_peft_with_our_logits(tune, folder, data, tmp_path):
    from peft import PeftModel

    result = dpo(tune, LORA_DPO, folder, tmp_path / "out", data, *FAST)
    assert result.code == 0, result.err
    final = tmp_path / "out/final"
    ids = torch.randint(0, 700, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        merged = load_hf_model(final / "merged")(ids).logits
        peft_logits = PeftModel.from_pretrained(load_hf_model(folder), str(final / "adapter")).eval()(ids).logits
        base = load_hf_model(folder)(ids).logits
    assert (merged - base).abs().max() > 1e-4  # DPO changed the model
    torch.testing.assert_close(peft_logits, merged, atol=1e-5, rtol=1e-5)


def test_accumulating_pairs_equals_one_larger_batch(tune, folder, data, tmp_path):
    one = dpo(tune, LORA_DPO, folder, tmp_path / "a", data, *FAST, "batch_size=4", "shuffle=False",
              "max_steps_per_epoch=2")
    two = dpo(tune, LORA_DPO, folder, tmp_path / "b", data, *FAST, "batch_size=2", "gradient_accumulation_steps=2",
              "shuffle=False", "max_steps_per_epoch=2")
    assert one.code == 0 and two.code == 0, one.err + two.err
    assert len(one.metrics) == len(two.metrics) == 2
    for a, b in zip(one.metrics, two.metrics):  # the same mean over 4 pairs, and the same gradient
        for key in ("loss", *METRICS):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=2e-6), key
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)


@pytest.mark.parametrize("loss", ["IPOLoss", "HingeLoss", "SimPOLoss", "ORPOLoss"])
def test_every_preference_loss_trains(tune, folder, data, tmp_path, loss):
    # The shipped config's loss.beta is DPO's; IPO's tau and the hinge's gamma keep their defaults.
    keep_beta = () if loss in ("SimPOLoss", "ORPOLoss") else ("~loss.beta",)
    result = dpo(tune, LORA_DPO, folder, tmp_path / "out", data, *FAST, f"loss._component_=tunelib.training.{loss}",
                 *keep_beta, "max_steps_per_epoch=3")
    assert result.code == 0, result.err
    assert all(math.isfinite(x) for x in result.losses) and len(result.losses) == 3
    assert all(name in result.metrics[0] for name in METRICS)


def test_torchtunes_dpo_loss_path_is_accepted(tune, folder, data, tmp_path):
    result = dpo(tune, LORA_DPO, folder, tmp_path / "out", data, "loss._component_=torchtune.rlhf.loss.DPOLoss",
                 "loss.beta=0.2", "max_steps_per_epoch=1")
    assert result.code == 0, result.err
    assert result.losses[0] == pytest.approx(math.log(2), abs=1e-6)


def test_sft_data_is_refused_in_one_line(tune, folder, tmp_path):
    result = finetune(tune, *LORA_DPO, folder, tmp_path / "out", "dataset._component_=tunelib.data.alpaca_dataset")
    assert result.code != 0
    assert "not preference data" in result.err and "Traceback" not in result.err


def test_sft_recipe_refuses_preference_pairs(tune, folder, data, tmp_path):
    result = finetune(tune, "lora_finetune_single_device", "llama3_2/1B_lora_tunelib", folder, tmp_path / "out",
                      "dataset._component_=tunelib.data.preference_dataset", data=data)
    assert result.code != 0
    assert "lora_dpo_single_device" in result.err and "Traceback" not in result.err


def test_full_dpo_frozen_copy_equals_precomputed_reference(tune, folder, data, tmp_path):
    copy = dpo(tune, FULL_DPO, folder, tmp_path / "a", data, "optimizer.lr=1e-3", "max_steps_per_epoch=3")
    table = dpo(tune, FULL_DPO, folder, tmp_path / "b", data, "optimizer.lr=1e-3", "max_steps_per_epoch=3",
                "precompute_reference_log_probs=True")
    assert copy.code == 0 and table.code == 0, copy.err + table.err
    assert copy.metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert (tmp_path / "b/reference_log_probs.pt").is_file()
    for a, b in zip(copy.metrics, table.metrics):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["rewards/margins"] == pytest.approx(b["rewards/margins"], abs=1e-5)
    weights = load_file(tmp_path / "a/final/model.safetensors")
    other = load_file(tmp_path / "b/final/model.safetensors")
    assert all(torch.allclose(weights[k], w, atol=1e-5) for k, w in other.items())


def test_lora_dpo_resume_continues_exactly(tune, folder, data, tmp_path):
    straight = dpo(tune, LORA_DPO, folder, tmp_path / "a", data, *FAST, "save_every_n_steps=2")
    assert straight.code == 0, straight.err
    shutil.copytree(tmp_path / "a/step_2", tmp_path / "b/step_2")  # as if the run had died after step 2
    resumed = dpo(tune, LORA_DPO, folder, tmp_path / "b", data, *FAST, "save_every_n_steps=2",
                  "resume_from_checkpoint=True")
    assert resumed.code == 0, resumed.err
    assert [m["step"] for m in resumed.metrics] == [3, 4]
    assert resumed.losses == straight.losses[2:]
    assert [m["rewards/accuracies"] for m in resumed.metrics] == [m["rewards/accuracies"] for m in straight.metrics[2:]]


def test_full_dpo_resume_with_precomputed_reference_continues_exactly(tune, folder, data, tmp_path):
    args = ("optimizer.lr=1e-3", "save_every_n_steps=2", "precompute_reference_log_probs=True")
    straight = dpo(tune, FULL_DPO, folder, tmp_path / "a", data, *args)
    assert straight.code == 0, straight.err
    shutil.copytree(tmp_path / "a/step_2", tmp_path / "b/step_2")
    shutil.copy(tmp_path / "a/reference_log_probs.pt", tmp_path / "b/reference_log_probs.pt")
    resumed = dpo(tune, FULL_DPO, folder, tmp_path / "b", data, *args, "resume_from_checkpoint=True")
    assert resumed.code == 0, resumed.err
    assert resumed.losses == straight.losses[2:]
    # The table gone, a resume from step 2 is refused: the weights have moved on from the reference.
    shutil.rmtree(tmp_path / "b/final")
    (tmp_path / "b/reference_log_probs.pt").unlink()
    again = dpo(tune, FULL_DPO, folder, tmp_path / "b", data, *args, "resume_from_checkpoint=True")
    assert again.code != 0 and "reference_log_probs.pt" in again.err and "Traceback" not in again.err


@pytest.mark.slow
def test_dpo_learns_to_prefer_the_right_answer(tune, folder, data, tmp_path):
    result = dpo(tune, LORA_DPO, folder, tmp_path / "out", data, "lr_scheduler.num_warmup_steps=0",
                 "optimizer.lr=5e-3", "batch_size=4", "max_steps_per_epoch=null", "epochs=4", "loss.beta=0.5")
    assert result.code == 0, result.err
    accuracies = [m["rewards/accuracies"] for m in result.metrics]
    assert len(accuracies) >= 24
    assert sum(accuracies[-6:]) / 6 > 0.5 and accuracies[0] == 0.0  # ties at step 1 count as not preferred
