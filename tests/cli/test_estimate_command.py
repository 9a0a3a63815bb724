"""`tune estimate RECIPE --config C [overrides]`: the peak memory per device part by part, the
time per step, whether it fits, and what to change when it does not; nothing loaded. A config
`tune run` would refuse gets `tune run`'s one-line error."""

from __future__ import annotations

import re

import pytest

from support.recipes import tiny_model_folder, words

LORA_8B = ("lora_finetune_single_device", "--config", "llama3_1/8B_lora", "device=cpu", "tokenizer.max_seq_len=1024")
# 70B trained in full: ~8 bytes a weight before activations, beyond any one machine's memory.
FULL_70B = ("full_finetune_single_device", "--config", "llama3_1/70B_full", "device=cpu")


def _gib(out: str, part: str) -> float:
    return float(re.search(rf"^  {re.escape(part)}\s+([\d.]+) GiB$", out, re.MULTILINE).group(1))


def test_the_breakdown_adds_up_to_the_total(tune):
    code, out, err = tune("estimate", *LORA_8B)
    assert code == 0, err
    parts = ["baseline (this process)", "weights", "trained weights", "gradients", "optimizer states", "activations",
             "loss chunks"]
    assert sum(_gib(out, p) for p in parts) == pytest.approx(_gib(out, "total"), abs=0.01)
    assert _gib(out, "weights") == pytest.approx(14.96, abs=0.01)  # 8.03B bf16 weights
    assert "batch_size=2 x 1024 tokens" in out and re.search(r"^Time per step: [\d.]+ (ms|s|min)$", out, re.MULTILINE)
    assert re.search(r"^Estimated peak memory: [\d.]+ GiB on cpu \(of [\d.]+ GiB available\)", out, re.MULTILINE)


def test_activation_checkpointing_and_more_gpus_are_seen(tune):
    _, plain, _ = tune("estimate", *LORA_8B)
    _, checkpointed, _ = tune("estimate", *LORA_8B, "enable_activation_checkpointing=True")
    assert _gib(checkpointed, "activations") < _gib(plain, "activations") / 4
    code, sharded, err = tune("estimate", "--nproc_per_node", "4", *LORA_8B)
    assert code == 0, err
    assert _gib(sharded, "weights") == pytest.approx(_gib(plain, "weights") / 4, abs=0.01)
    assert _gib(sharded, "FSDP all-gather buffers") > 0 and "per device over 4" in sharded


def test_a_run_that_does_not_fit_gets_a_line_per_change(tune):
    code, out, err = tune("estimate", *FULL_70B, "batch_size=4")
    assert code == 0, err
    assert "warning: it will not fit" in out
    advice = out.split("To fit, change one of:\n", 1)[1].splitlines()
    assert any(line.startswith("  batch_size=1 gradient_accumulation_steps=4 (the same tokens per step): ")
               for line in advice), advice


def test_preference_pairs_count_twice_and_full_dpo_holds_its_reference(tune):
    same = ("device=cpu", "tokenizer.max_seq_len=1024", "batch_size=2", "enable_activation_checkpointing=True",
            "model.lora_rank=8", "model.lora_alpha=16", "model.apply_lora_to_output=False")
    _, sft, _ = tune("estimate", "lora_finetune_single_device", "--config", "llama3_2/1B_lora_single_device", *same)
    _, lora_dpo, _ = tune("estimate", "lora_dpo_single_device", "--config", "llama3_2/1B_lora_dpo", *same)
    # a pair is a chosen and a rejected sequence in one batch; the reference is the base, adapters off
    assert _gib(lora_dpo, "activations") == pytest.approx(2 * _gib(sft, "activations"), abs=0.002)
    assert _gib(lora_dpo, "loss chunks") == pytest.approx(2 * _gib(sft, "loss chunks"), abs=0.002)
    assert "reference model" not in lora_dpo
    code, full, err = tune("estimate", "full_dpo_single_device", "--config", "llama3_2/1B_full_dpo", *same)
    assert code == 0, err
    assert _gib(full, "reference model weights") == pytest.approx(_gib(full, "trained weights"), abs=0.002)
    _, precomputed, _ = tune("estimate", "full_dpo_single_device", "--config", "llama3_2/1B_full_dpo", *same,
                             "precompute_reference_log_probs=True")
    assert "reference model" not in precomputed
    assert _gib(precomputed, "total") < _gib(full, "total") - 2.3


def test_a_distillation_teacher_is_counted(tune):
    kd = ("knowledge_distillation_single_device", "--config", "llama3_2/8B_to_1B_KD_lora_single_device",
          "device=cpu", "tokenizer.max_seq_len=1024")
    code, out, err = tune("estimate", *kd)
    assert code == 0, err
    assert _gib(out, "teacher weights") == pytest.approx(14.96, abs=0.01)  # Llama 3.1 8B in bf16
    assert _gib(out, "weights") == pytest.approx(2.30, abs=0.01)  # the 1B student
    assert _gib(out, "teacher forward") > 0
    _, sharded, _ = tune("estimate", "--nproc_per_node", "4", *kd)
    assert _gib(sharded, "teacher weights") == pytest.approx(14.96 / 4, abs=0.01)


def test_mixture_of_experts_qlora_advice_and_step_time_count_the_experts(tune):
    lora = ("lora_finetune_single_device", "--config", "qwen3_moe/30B-A3B_lora", "device=cpu")
    _, out, _ = tune("estimate", *lora)
    _, qlora, _ = tune("estimate", "lora_finetune_single_device", "--config", "qwen3_moe/30B-A3B_qlora", "device=cpu")
    assert _gib(out, "weights") == pytest.approx(56.87, abs=0.01)  # 30.5B bf16 weights, experts included
    # the advice quantizes the stacked experts too, as the QLoRA config does (and leaves the routers)
    advice = re.search(r"model.quantize_base=True \(QLoRA: NF4 decoder weights\): ([\d.]+) GiB", out)
    assert float(advice.group(1)) == pytest.approx(_gib(qlora, "total"), rel=0.02)  # baselines differ a little
    assert _gib(qlora, "weights") < 16  # NF4 experts: about 0.52 bytes a weight


def test_a_refused_config_gets_what_tune_run_says(tune, tmp_path, capsys):
    folder = tiny_model_folder(tmp_path, "llama3_2")
    capsys.readouterr()  # transformers' progress bar while the folder was written
    refused = ("full_finetune_single_device", "--config", "llama3_2/1B_lora_tunelib",
               *words(folder, tmp_path / "out", None, ()))
    code, _, err = tune("estimate", *refused)
    run_code, _, run_err = tune("run", *refused)
    assert code == 2 and run_code == 2
    assert err.startswith("tune: error: the model config asks for adapters") and err.count("\n") == 1
    assert err == run_err


@pytest.mark.parametrize("words, message", [
    (("--nproc_per_node", "0", *LORA_8B), "--nproc_per_node=0; give a whole number of processes"),
    (("--config", "llama3_1/8B_lora"), "`tune estimate` needs a recipe first"),
    (("lora_finetune_single_device", "--config", "llama3_1/8B_lora", "model.lora_rnak=4"), "lora_rnak"),
])
def test_bad_words_are_one_line_errors(tune, words, message):
    code, _, err = tune("estimate", *words)
    assert code == 2 and message in err and err.startswith("tune: error:") and "Traceback" not in err, err
