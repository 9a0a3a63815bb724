"""Training options a user turns on: activation checkpointing, compile, metric loggers, rsLoRA,
embedding LoRA, other optimizers and schedules, and what the user sees while it runs."""

from __future__ import annotations

import json

import pytest

from support.recipes import finetune, tiny_model_folder

LORA = ("lora_finetune_single_device", "llama3_2/1B_lora_tunelib")
FAST = ("lr_scheduler.num_warmup_steps=0", "optimizer.lr=3e-3")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("models"), "qwen2_5")


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, folder):
    from tunelib.cli.main import main

    out = tmp_path_factory.mktemp("base") / "out"
    result = finetune(lambda *w: (main(list(w)), "", ""), *LORA, folder, out, *FAST)
    assert result.code == 0
    return result.losses


def test_activation_checkpointing_gives_the_same_losses(tune, folder, tmp_path, baseline):
    result = finetune(tune, *LORA, folder, tmp_path / "out", *FAST, "enable_activation_checkpointing=True")
    assert result.code == 0, result.err
    assert result.losses == pytest.approx(baseline, abs=1e-6)


@pytest.mark.slow
def test_compile_gives_the_same_losses(tune, folder, tmp_path, baseline):
    result = finetune(tune, *LORA, folder, tmp_path / "out", *FAST, "compile=True")
    assert result.code == 0, result.err
    assert result.losses == pytest.approx(baseline, abs=1e-4)


def test_stdout_tensorboard_and_wandb_offline(tune, folder, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    loggers = ("metric_logger=[{_component_: tunelib.training.StdoutLogger}, "
               f"{{_component_: tunelib.training.TensorBoardLogger, log_dir: {tmp_path / 'tb'}}}, "
               f"{{_component_: tunelib.training.WandBLogger, project: t, mode: offline, log_dir: {tmp_path / 'wb'}}}, "
               f"{{_component_: tunelib.training.JSONLLogger, log_dir: {tmp_path / 'out'}}}]")
    result = finetune(tune, *LORA, folder, tmp_path / "out", *FAST, loggers)
    assert result.code == 0, result.err
    assert "Step 4 | loss:" in result.out
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert list((tmp_path / "wb").rglob("*.wandb"))
    assert len(result.losses) == 4


def test_progress_lines_when_not_a_terminal(tune, folder, tmp_path):
    result = finetune(tune, *LORA, folder, tmp_path / "out", *FAST)
    lines = [line for line in result.out.splitlines() if line.startswith("step ")]
    assert len(lines) == 4 and "loss=" in lines[0] and "tokens_per_second=" in lines[0] and "eta=" in lines[0]


def test_rslora_embedding_lora_sgd_and_linear_schedule(tune, folder, tmp_path):
    result = finetune(tune, *LORA, folder, tmp_path / "out", "+model.use_rslora=True",
                      "+model.apply_lora_to_embeddings=True", "optimizer._component_=torch.optim.SGD",
                      "~optimizer.weight_decay", "optimizer.lr=0.05",
                      "lr_scheduler._component_=tunelib.training.get_linear_schedule_with_warmup")
    assert result.code == 0, result.err
    config = json.loads((tmp_path / "out/final/adapter/adapter_config.json").read_text())
    assert config["use_rslora"] is True and "embed_tokens" in config["target_modules"]
    assert result.losses[-1] < result.losses[0]


def test_clip_grad_norm_logs_the_norm(tune, folder, tmp_path):
    result = finetune(tune, *LORA, folder, tmp_path / "out", *FAST, "clip_grad_norm=1e-3")
    assert result.code == 0, result.err
    assert all(m["grad_norm"] > 0 for m in result.metrics)


@pytest.mark.parametrize("override, message", [
    ("batch_size=0", "batch_size=0; it must be 1 or more"),
    ("dtype=fp16", "expected one of 'fp32', 'bf16'"),
    ("model.lora_attn_modules=[q_proj,w_proj]", "did you mean"),
    ("enable_activation_offloading=True", "needs enable_activation_checkpointing"),
])
def test_bad_settings_stop_before_training(tune, folder, tmp_path, override, message):
    result = finetune(tune, *LORA, folder, tmp_path / "out", override)
    assert result.code == 2 and message in result.err and "Traceback" not in result.err
    assert not (tmp_path / "out/final").exists() and not (tmp_path / "out/metrics.jsonl").exists()
