"""The memory estimate against what runs measure: `tune run` prints it at start, and it lands
within 25% of the run's own peak (summary.json's peak_memory_gib, the process's resident
memory on this CPU) for LoRA and full fine-tuning of a 10 MB and a ~100 MB model, for LoRA and
full DPO, and for distillation with its teacher; its parts add up; activation checkpointing,
NF4 and FSDP move the parts they should."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch

from support.data import write_rows
from support.recipes import ROWS, data_file, tiny_model_folder, words
from tunelib.config import build_config
from tunelib.peft import is_adapter_key
from tunelib.registry import find_config
from tunelib.training.estimate import GIB, NF4_BYTES, estimate
from tunelib.training.settings import FullSettings, LoRASettings
from tunelib.training.setup import _model

LORA = ("lora_finetune_single_device", "llama3_2/1B_lora_tunelib")
FULL = ("full_finetune_single_device", "llama3_2/1B_full_tunelib")
# Llama-3-shaped folders of about 10 MB and 100 MB in fp32 (untied embedding and output layer).
SMALL = dict(vocab_size=8192, hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=2,
             num_key_value_heads=2)  # every decoder linear a multiple of NF4's 16384-element blocks
MEDIUM = dict(vocab_size=8192, hidden_size=512, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=4,
              num_key_value_heads=2)
STEPS = ("max_steps_per_epoch=2", "tokenizer.max_seq_len=128", "log_peak_memory_stats=True")
# chosen: the row's answer; rejected: the next row's (another question's)
PAIRS = [{"prompt": r["instruction"], "chosen": r["output"], "rejected": ROWS[(i + 1) % len(ROWS)]["output"]}
         for i, r in enumerate(ROWS) if r["output"] != ROWS[(i + 1) % len(ROWS)]["output"]]
ADAMW = ("optimizer._component_=torch.optim.AdamW", "optimizer_in_bwd=False")  # the config's: 8-bit, in backward


def _config(folder, tmp_path, recipe_config, schema, *overrides):
    return build_config(find_config(recipe_config[1]), words(folder, tmp_path / "out", data_file(tmp_path), overrides),
                        schema)


def _estimate(cfg, method, world_size=1):
    return estimate(cfg, _model(cfg), method, world_size=world_size, device=torch.device("cpu"), time_step=False)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("small"), "llama3", **SMALL)


def test_the_parts_add_up_to_the_printed_total(small, tmp_path):
    cfg = _config(small, tmp_path, LORA, LoRASettings, *STEPS)
    result = _estimate(cfg, "lora")
    assert result.total == sum(result.parts.values())
    assert {"baseline (this process)", "weights", "trained weights", "gradients", "optimizer states",
            "activations", "loss chunks"} <= set(result.parts)
    assert all(size >= 0 for size in result.parts.values())
    printed = [float(line.split()[-2]) for line in result.lines() if line.startswith("  ") and "GiB" in line]
    assert sum(printed[:-1]) == pytest.approx(printed[-1], abs=0.002 * len(printed))  # rounding only
    assert f"{result.total / GIB:.2f} GiB" in result.one_line() and "will not fit" not in result.one_line()


def test_weights_gradients_and_adamw_states_follow_the_method(small, tmp_path):
    lora = _estimate(_config(small, tmp_path, LORA, LoRASettings, *STEPS), "lora").parts
    full = _estimate(_config(small, tmp_path, FULL, FullSettings, *STEPS, *ADAMW), "full").parts
    in_backward = _estimate(_config(small, tmp_path, FULL, FullSettings, *STEPS), "full").parts
    weights = sum(p.numel() * 4 for p in _model(_config(small, tmp_path, FULL, FullSettings)).parameters())
    assert full["trained weights"] == weights and full["weights"] == 0
    assert full["gradients"] == weights
    # AdamW's two fp32 moments, plus the step's scratch (one tensor the size of the largest weight)
    assert 2 * weights < full["optimizer states"] < 2.5 * weights
    assert lora["weights"] + lora["trained weights"] > weights and lora["trained weights"] < 0.05 * weights
    # 8-bit AdamW keeps about 2 bytes per weight; in backward only one gradient is alive at a time
    assert in_backward["optimizer states"] < 0.5 * full["optimizer states"] and in_backward["gradients"] < 0.5 * weights


def test_checkpointing_shrinks_activations_and_qlora_the_weights(small, tmp_path):
    plain = _estimate(_config(small, tmp_path, LORA, LoRASettings, *STEPS), "lora").parts
    checkpointed = _estimate(_config(small, tmp_path, LORA, LoRASettings, *STEPS,
                                     "enable_activation_checkpointing=True"), "lora").parts
    selective = _estimate(_config(small, tmp_path, LORA, LoRASettings, *STEPS, "enable_activation_checkpointing=True",
                                  "ac_mode=selective", "ac_option=2"), "lora").parts
    assert checkpointed["activations"] < selective["activations"] < plain["activations"]
    qlora = _estimate(_config(small, tmp_path, LORA, LoRASettings, *STEPS, "model.quantize_base=True"), "lora").parts
    model = _model(_config(small, tmp_path, LORA, LoRASettings))
    linears = sum(p.numel() for name, p in model.model.layers.named_parameters() if p.dim() == 2
                  and not is_adapter_key(name))
    # the decoder linears from 4 bytes to NF4's ~0.52; the embedding and output layer stay fp32
    assert qlora["weights"] == pytest.approx(plain["weights"] - linears * (4 - NF4_BYTES), rel=1e-3)


def test_fsdp_divides_the_model_and_adds_gather_buffers(small, tmp_path):
    one = _estimate(_config(small, tmp_path, FULL, FullSettings, *STEPS), "full").parts
    four = _estimate(_config(small, tmp_path, FULL, FullSettings, *STEPS), "full", world_size=4).parts
    assert four["trained weights"] == one["trained weights"] // 4
    assert four["FSDP all-gather buffers"] > 0 and "FSDP all-gather buffers" not in one
    assert four["activations"] == one["activations"]  # each process keeps its own batch's


def _run(folder, tmp_path, recipe_config, *overrides, data=None) -> tuple[float, float]:
    """(the estimate `tune run` printed, the peak it measured), in GiB, from a fresh process."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "tunelib.cli.main", "run", recipe_config[0], "--config", recipe_config[1],
           *words(folder, out, data or data_file(tmp_path), (*STEPS, *overrides))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = re.search(r"Estimated peak memory: ([\d.]+) GiB", proc.stdout)
    assert printed, proc.stdout
    return float(printed.group(1)), json.loads((out / "summary.json").read_text())["peak_memory_gib"]


@pytest.mark.slow
@pytest.mark.parametrize("shape, recipe_config, overrides", [
    (SMALL, LORA, ()), (MEDIUM, LORA, ()), (SMALL, FULL, ADAMW), (MEDIUM, FULL, ADAMW),
    (MEDIUM, FULL, ()),  # the shipped full config's 8-bit AdamW, stepped in backward (a compiled step)
], ids=["lora-10MB", "lora-100MB", "full-10MB", "full-100MB", "full-8bit-in-backward-100MB"])
def test_the_estimate_is_within_a_quarter_of_the_measured_peak(tmp_path, shape, recipe_config, overrides):
    folder = tiny_model_folder(tmp_path / "model", "llama3", **shape)
    estimated, measured = _run(folder, tmp_path, recipe_config, *overrides)
    assert abs(estimated - measured) <= 0.25 * measured, (estimated, measured)


@pytest.mark.slow
@pytest.mark.parametrize("recipe_config", [("lora_dpo_single_device", "llama3_2/1B_lora_dpo"),
                                           ("full_dpo_single_device", "llama3_2/1B_full_dpo")],
                         ids=["lora-dpo-100MB", "full-dpo-100MB"])
def test_preference_runs_land_within_a_quarter(tmp_path, recipe_config):
    """Pairs are two sequences a row, and full DPO holds a frozen reference copy: both counted."""
    folder = tiny_model_folder(tmp_path / "model", "llama3", **MEDIUM)
    data = write_rows(tmp_path / "pairs.jsonl", PAIRS)
    estimated, measured = _run(folder, tmp_path, recipe_config, "optimizer._component_=torch.optim.AdamW",
                               data=data)
    assert abs(estimated - measured) <= 0.25 * measured, (estimated, measured)


@pytest.mark.slow
def test_a_distillation_run_lands_within_a_quarter(tmp_path):
    """The teacher (here about 9 times the student's size) is held beside it, and counted."""
    student = tiny_model_folder(tmp_path / "student", "llama3", **SMALL)
    teacher = tiny_model_folder(tmp_path / "teacher", "llama3", **MEDIUM)
    estimated, measured = _run(student, tmp_path, ("knowledge_distillation_single_device",
                                                   "llama3_2/3_to_1B_KD_lora"),
                               "teacher_model._component_=tunelib.models.from_hf_config",
                               f"teacher_checkpoint_dir={teacher}")
    assert abs(estimated - measured) <= 0.25 * measured, (estimated, measured)
