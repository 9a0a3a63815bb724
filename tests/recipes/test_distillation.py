"""`tune run knowledge_distillation_single_device` on tiny models: the logged loss mixes cross-entropy
and the divergence by kd_ratio, kd_ratio=0 is plain LoRA fine-tuning, a teacher with another
tokenizer is refused up front, full students, torchtune's keys, exact resume."""

from __future__ import annotations

import shutil

import pytest

from support.recipes import finetune, tiny_model_folder
from support.tokenizers import write_tokenizer

KD = ("knowledge_distillation_single_device", "llama3_2/3_to_1B_KD_lora")
FAST = ("lr_scheduler.num_warmup_steps=0", "optimizer.lr=3e-3")


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("student"), "llama3_2")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("teacher"), "llama3_2", num_hidden_layers=3)


def distill(tune, student, teacher, out, *overrides, recipe=KD):
    return finetune(tune, *recipe, student, out, "teacher_model._component_=tunelib.models.from_hf_config",
                    f"teacher_checkpoint_dir={teacher}", *FAST, *overrides)


def test_loss_mixes_cross_entropy_and_kl_by_kd_ratio(tune, student, teacher, tmp_path):
    result = distill(tune, student, teacher, tmp_path / "out", "kd_ratio=0.3")
    assert result.code == 0, result.err
    for m in result.metrics:
        assert m["loss"] == pytest.approx(0.7 * m["class_loss"] + 0.3 * m["kd_loss"], rel=1e-5)
        assert m["kd_loss"] > 0  # a different teacher: the distributions differ
    steps = [line for line in result.out.splitlines() if line.startswith("step ")]
    assert len(steps) == 4 and all("kd_loss=" in line for line in steps), steps
    assert result.metrics[-1]["kd_loss"] < result.metrics[0]["kd_loss"]  # the student moves towards it
    assert (tmp_path / "out/final/adapter/adapter_model.safetensors").is_file()


def test_kd_ratio_zero_trains_as_lora_finetuning(tune, student, teacher, tmp_path):
    kd = distill(tune, student, teacher, tmp_path / "kd", "kd_ratio=0")
    lora = finetune(tune, "lora_finetune_single_device", "llama3_2/3_to_1B_KD_lora", student, tmp_path / "lora", *FAST,
                    "~teacher_model", "~teacher_checkpoint_dir", "~kd_loss", "~kd_ratio")
    assert kd.code == 0 and lora.code == 0, kd.err + lora.err
    assert kd.losses == pytest.approx(lora.losses, abs=1e-6)


def test_teacher_with_another_tokenizer_is_refused_before_training(tune, student, tmp_path):
    other = tiny_model_folder(tmp_path / "other", "llama3_2", num_hidden_layers=3)
    write_tokenizer(other, "qwen2")  # another vocabulary in the teacher's folder
    result = distill(tune, student, other, tmp_path / "out")
    assert result.code != 0
    assert "share one tokenizer" in result.err and "Traceback" not in result.err
    assert not (tmp_path / "out").exists()  # nothing left behind


def test_a_student_without_adapters_trains_every_weight(tune, student, teacher, tmp_path):
    result = distill(tune, student, teacher, tmp_path / "out", "~model.lora_attn_modules", "~model.apply_lora_to_mlp",
                     "~model.apply_lora_to_output", "~model.lora_rank", "~model.lora_alpha", "~model.lora_dropout",
                     "optimizer.lr=1e-3")
    assert result.code == 0, result.err
    assert (tmp_path / "out/final/model.safetensors").is_file()
    assert not (tmp_path / "out/final/adapter").exists()


def test_torchtunes_teacher_keys_and_kd_loss_names_work(tune, student, teacher, tmp_path):
    result = finetune(tune, *KD, student, tmp_path / "out", "teacher_model._component_=tunelib.models.from_hf_config",
                      "~teacher_checkpoint_dir",
                      "+teacher_checkpointer._component_=torchtune.training.FullModelHFCheckpointer",
                      f"+teacher_checkpointer.checkpoint_dir={teacher}",
                      "+teacher_checkpointer.output_dir=${output_dir}",
                      "kd_loss._component_=torchtune.modules.loss.ForwardKLWithChunkedOutputLoss",
                      "max_steps_per_epoch=1", *FAST)
    assert result.code == 0, result.err
    assert result.metrics[0]["kd_loss"] > 0


@pytest.mark.parametrize("divergence", ["ReverseKLLoss", "SymmetricKLLoss", "JSDLoss"])
def test_every_divergence_trains(tune, student, teacher, tmp_path, divergence):
    result = distill(tune, student, teacher, tmp_path / "out", f"kd_loss._component_=tunelib.training.{divergence}",
                     "max_steps_per_epoch=2")
    assert result.code == 0, result.err
    assert all(m["kd_loss"] > 0 for m in result.metrics)


def test_distillation_resume_continues_exactly(tune, student, teacher, tmp_path):
    straight = distill(tune, student, teacher, tmp_path / "a", "save_every_n_steps=2")
    assert straight.code == 0, straight.err
    shutil.copytree(tmp_path / "a/step_2", tmp_path / "b/step_2")
    resumed = distill(tune, student, teacher, tmp_path / "b", "save_every_n_steps=2", "resume_from_checkpoint=True")
    assert resumed.code == 0, resumed.err
    assert [m["step"] for m in resumed.metrics] == [3, 4]
    assert resumed.losses == straight.losses[2:]
    assert [m["kd_loss"] for m in resumed.metrics] == [m["kd_loss"] for m in straight.metrics[2:]]


def test_a_divergence_as_the_loss_of_supervised_fine_tuning_is_refused(tune, student, tmp_path):
    code, out, err = tune("validate", "llama3_2/1B_lora_tunelib", "loss._component_=tunelib.training.ForwardKLLoss")
    assert code != 0 and "kd_loss" in err and "Traceback" not in err
