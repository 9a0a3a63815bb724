"""DPO and distillation on two CPU processes (gloo): the same global batch gives the single-device
losses and metrics, with the reference copy, the precomputed reference and the teacher sharded."""

from __future__ import annotations

import pytest

from support.data import write_rows
from support.recipes import finetune, tiny_model_folder, torchrun_finetune

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
FAST = ("lr_scheduler.num_warmup_steps=0", "optimizer.lr=1e-3")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("models"), "llama3_2")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    answers = ["7", "tac", "Blue is a colour.", "Bonjour!", "2 times 5 is 10.", "cold", "1 2 3"]
    rows = [{"prompt": f"Question {i}?", "chosen": a, "rejected": answers[(i + 1) % len(answers)]}
            for i, a in enumerate(answers)]
    return write_rows(tmp_path_factory.mktemp("data") / "pairs.jsonl", rows * 3)  # 21 pairs: uneven shares


def same(one, two, keys, tol=1e-5):
    assert len(one.metrics) == len(two.metrics) > 0
    for a, b in zip(one.metrics, two.metrics):
        for key in keys:
            assert a[key] == pytest.approx(b[key], abs=tol), (key, a, b)


@pytest.mark.parametrize("precompute", [False, True])
def test_full_dpo_on_two_processes_matches_one(tune, folder, pairs, tmp_path, precompute):
    args = (*FAST, "max_steps_per_epoch=3", f"precompute_reference_log_probs={precompute}")
    one = finetune(tune, "full_dpo_single_device", "llama3_2/1B_full_dpo", folder, tmp_path / "one", *args,
                   "batch_size=4", data=pairs)
    two = torchrun_finetune(2, "full_dpo_distributed", "llama3_2/1B_full_dpo", folder, tmp_path / "two", *args,
                            "batch_size=2", data=pairs)
    assert one.code == 0 and two.code == 0, one.err[-2000:] + two.err[-3000:]
    same(one, two, ("loss", "rewards/margins", "rewards/accuracies", "log_probs/chosen"))


def test_lora_dpo_on_two_processes_matches_one(tune, folder, pairs, tmp_path):
    one = finetune(tune, "lora_dpo_single_device", "llama3_2/1B_lora_dpo", folder, tmp_path / "one", *FAST,
                   "batch_size=4", "max_steps_per_epoch=3", data=pairs)
    two = torchrun_finetune(2, "lora_dpo_distributed", "llama3_2/1B_lora_dpo", folder, tmp_path / "two", *FAST,
                            "batch_size=2", "max_steps_per_epoch=3", data=pairs)
    assert one.code == 0 and two.code == 0, two.err[-3000:]
    same(one, two, ("loss", "rewards/chosen", "rewards/rejected", "log_probs/rejected"))


def test_distillation_on_two_processes_matches_one(tune, folder, tmp_path):
    teacher = tiny_model_folder(tmp_path / "teacher", "llama3_2", num_hidden_layers=3)
    args = ("teacher_model._component_=tunelib.models.from_hf_config", f"teacher_checkpoint_dir={teacher}", *FAST)
    one = finetune(tune, "knowledge_distillation_single_device", "llama3_2/3_to_1B_KD_lora", folder, tmp_path / "one",
                   *args, "batch_size=4")
    two = torchrun_finetune(2, "knowledge_distillation_distributed", "llama3_2/3_to_1B_KD_lora", folder,
                            tmp_path / "two", *args, "batch_size=2")
    assert one.code == 0 and two.code == 0, two.err[-3000:]
    same(one, two, ("loss", "class_loss", "kd_loss"))
