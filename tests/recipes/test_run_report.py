"""What a run says when it ends (issue 17, points 8, 10 and 11): the demo's summary and next
commands, summary.json, the resume command of a stopped run, metric loggers beside
metrics.jsonl, filter_fn from a config, and load commands that work as printed."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from support.data import write_rows
from support.recipes import ROWS, finetune, tiny_model_folder
from tunelib.training.report import final_message, next_commands

REPO = Path(__file__).resolve().parents[2]
LORA = ("lora_finetune_single_device", "llama3_2/1B_lora_tunelib")


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=f"{REPO / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                PYTHONUNBUFFERED="1", HF_DATASETS_DISABLE_PROGRESS_BARS="1")


def _tune(words: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """`tune WORDS` as a user's shell runs it (a leading "tune" is the console script)."""
    words = words[1:] if words and words[0] == "tune" else words
    return subprocess.run([sys.executable, "-m", "tunelib.cli.main", *words], capture_output=True, text=True,
                          timeout=timeout, env=_env())


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    proc = _tune(["run", "lora_finetune_single_device", "--config", "demo/tiny_lora", f"output_dir={out}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


@pytest.mark.slow
def test_the_demo_prints_its_data_a_summary_and_writes_summary_json(demo):
    out, stdout = demo
    assert re.search(r"dataset .*chat_tiny\.jsonl: 800 rows kept, 0 skipped .*; [\d,]+ tokens, [\d,]+ trained", stdout)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 200 == metrics[-1]["step"]
    assert summary["trained_tokens"] == metrics[-1]["tokens"]
    assert summary["last_loss"] == pytest.approx(metrics[-1]["loss"])
    assert summary["best_loss"] <= summary["last_loss"] < summary["first_loss"]
    assert summary["peak_memory_gib"] > 0 and summary["seconds"] > 0 and summary["trained_tokens_per_second"] > 0
    assert summary["outputs"] == {"final": str(out / "final"), "adapter": str(out / "final/adapter"),
                                  "merged": str(out / "final/merged")}
    assert f"Summary: 200 steps, {summary['trained_tokens']:,} trained tokens in " in stdout
    assert f"best {summary['best_loss']:.4f} (step {summary['best_step']})" in stdout


@pytest.mark.slow
def test_the_demos_next_commands_work_as_printed(demo):
    out, stdout = demo
    tried = stdout.split("Try next:\n", 1)[1].splitlines()
    assert tried[0] == f"  tune chat {out / 'final/merged'}"
    generate = shlex.split(tried[1])
    first_question = json.loads((REPO / "tunelib/assets/demo/chat_tiny.jsonl").read_text().splitlines()[0])["input"]
    assert generate[-1] == f"prompt={first_question}"
    # As printed (sampled), then greedy: the demo model has learned the answer to its data's first question.
    assert _tune(generate + ["max_new_tokens=24"]).returncode == 0
    greedy = _tune(generate + ["temperature=0", "max_new_tokens=24"])
    assert greedy.returncode == 0, greedy.stderr[-2000:]
    assert "The plural of city is cities." in greedy.stdout


@pytest.mark.slow
def test_a_stopped_run_prints_the_command_that_resumes_it(tmp_path):
    folder = tiny_model_folder(tmp_path / "m", "llama3_2")
    data, out = write_rows(tmp_path / "train.jsonl", ROWS), tmp_path / "out"
    words = ["run", *LORA[:1], "--config", LORA[1], f"checkpoint_dir={folder}", f"output_dir={out}",
             "model._component_=tunelib.models.from_hf_config", "tokenizer._component_=tunelib.tokenizers.from_pretrained",
             "dataset.source=json", f"dataset.data_files={data}", "dtype=fp32", "device=cpu", "seed=0",
             "batch_size=2", "gradient_accumulation_steps=1", "epochs=4", "lr_scheduler=null", "log_every_n_steps=1"]
    proc = subprocess.Popen([sys.executable, "-m", "tunelib.cli.main", *words], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-3000:]
    command = stdout.split("Resume with:\n", 1)[1].splitlines()[0].strip()
    assert command == (f"tune run lora_finetune_single_device --config {out / 'config.yaml'} "
                       "resume_from_checkpoint=True")
    resumed = _tune(shlex.split(command))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stdout
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines() if "loss" in line]
    assert steps == list(range(1, 65))  # 32 rows, batch 2, 4 epochs: every step once


def test_a_chosen_metric_logger_adds_to_metrics_jsonl(tune, tmp_path):
    folder = tiny_model_folder(tmp_path / "m", "llama3_2")
    result = finetune(tune, *LORA, folder, tmp_path / "out", "metric_logger._component_=tunelib.training.StdoutLogger")
    assert result.code == 0, result.err
    assert [m["step"] for m in result.metrics] == [1, 2, 3, 4]
    assert "Step 4 | loss:" in result.out
    tb = finetune(tune, *LORA, folder, tmp_path / "tb", "metric_logger._component_=tunelib.training.TensorBoardLogger",
                  f"+metric_logger.log_dir={tmp_path / 'tb/logs'}")
    assert tb.code == 0, tb.err
    assert [m["step"] for m in tb.metrics] == [1, 2, 3, 4] and list((tmp_path / "tb/logs").glob("events.*"))


@pytest.mark.parametrize("given", ["dataset.filter_fn=support.data.short_outputs",
                                   "dataset.filter_fn={_component_: support.data.longer_than, min_chars: 11}"])
def test_filter_fn_from_a_config(tune, tmp_path, allow_support, given):
    folder = tiny_model_folder(tmp_path / "m", "llama3_2")
    result = finetune(tune, *LORA, folder, tmp_path / "out", "+" + given)
    assert result.code == 0, result.err
    short = sum(len(r["output"]) < 12 for r in ROWS)
    kept = short if "short_outputs" in given else len(ROWS) - short
    assert f": {kept} rows kept" in result.out


def test_a_filter_fn_outside_the_allow_list_is_refused(tune):
    code, _, err = tune("validate", "llama3_2/1B_lora_tunelib", "+dataset.filter_fn=os.path.exists")
    assert code == 2 and "dataset.filter_fn: 'os.path.exists' is not in an allowed module" in err


def test_cpu_threads_sets_torchs_threads(tune, tmp_path):
    before = torch.get_num_threads()
    try:
        result = finetune(tune, *LORA, tiny_model_folder(tmp_path / "m"), tmp_path / "out", "cpu_threads=1",
                          "max_steps_per_epoch=1")
        assert result.code == 0 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    code, _, err = tune("validate", "llama3_2/1B_lora_tunelib", "cpu_threads=0")
    assert code == 2 and "cpu_threads=0; it must be 1 or more, or null" in err


# -- the load commands printed at the end (point 11) ------------------------------------------


def _adapter_folder(tmp_path: Path, **config) -> Path:
    final = tmp_path / "final"
    (final / "adapter").mkdir(parents=True)
    (final / "merged").mkdir()
    (final / "adapter/adapter_config.json").write_text(json.dumps({"peft_type": "LORA", **config}))
    return final


@pytest.mark.parametrize(("rank", "flag"), [(8, ""), (16, ""), (24, " --max-lora-rank 32"), (64, " --max-lora-rank 64")])
def test_vllm_command_raises_the_max_lora_rank_when_the_adapter_needs_it(tmp_path, rank, flag):
    final = _adapter_folder(tmp_path, r=rank, use_dora=False)
    text = final_message(final, "meta-llama/Llama-3.2-1B", adapter=True, merged=True)
    assert f"vllm serve meta-llama/Llama-3.2-1B --enable-lora{flag} --lora-modules mine={final / 'adapter'}" in text


def test_vllm_is_pointed_at_the_merged_folder_for_dora(tmp_path):
    final = _adapter_folder(tmp_path, r=8, use_dora=True)
    text = final_message(final, "base", adapter=True, merged=True)
    assert "--enable-lora" not in text and "does not load DoRA adapters; serve the merged folder" in text
    assert f"vllm serve {final / 'merged'}" in text
    alone = final_message(final, "base", adapter=True, merged=False)
    assert "--enable-lora" not in alone and f"tune merge_lora --adapter {final / 'adapter'}" in alone


def test_the_export_command_says_to_install_gguf_when_it_is_missing(tmp_path, monkeypatch):
    from tunelib.training import report

    monkeypatch.setattr(report, "gguf_installed", lambda: False)  # `pip install tunelib`, as the demo installs it
    line = next_commands(tmp_path / "final", "/models/base", adapter=False, merged=False, prompt=None)[-1]
    assert line == f"  pip install 'tunelib[gguf]' && tune export gguf {tmp_path / 'final'} -o {tmp_path / 'model.gguf'}"
    monkeypatch.setattr(report, "gguf_installed", lambda: True)
    line = next_commands(tmp_path / "final", "/models/base", adapter=False, merged=False, prompt=None)[-1]
    assert line == f"  tune export gguf {tmp_path / 'final'} -o {tmp_path / 'model.gguf'}"


def test_next_commands_for_an_adapter_without_a_merged_folder(tmp_path):
    lines = next_commands(tmp_path / "final", "/models/base", adapter=True, merged=False, prompt='Say "hi"')
    assert lines[0] == f"  tune chat /models/base --adapter {tmp_path / 'final/adapter'}"
    words = shlex.split(lines[1])
    assert f"adapter_dir={tmp_path / 'final/adapter'}" in words and words[-1] == 'prompt=Say "hi"'
