"""Runs that go wrong on purpose: a NaN loss, a rank that hangs or dies, a kill during a save,
SIGTERM and SIGINT. In each, the last good checkpoint survives and the message says what happened."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.recipes import finetune, tiny_model_folder, torchrun_finetune, words

LORA = ("lora_finetune_single_device", "llama3_2/1B_lora_tunelib")
FAST = ("lr_scheduler.num_warmup_steps=0", "optimizer.lr=3e-3")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("models"), "llama3_2")


def env() -> dict:
    return dict(os.environ, PYTHONPATH=f"{REPO / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                TUNELIB_ALLOW_MODULES="support", PYTHONUNBUFFERED="1")


def test_nan_loss_stops_before_the_step_and_keeps_the_last_checkpoint(tune, folder, tmp_path, allow_support):
    result = finetune(tune, *LORA, folder, tmp_path / "out", *FAST, "save_every_n_steps=2",
                      "loss={_component_: support.faults.NaNLoss, at_call: 3}")
    assert result.code == 1
    assert "non-finite loss nan at step 3; stopped before the optimizer step" in result.err
    assert "Traceback" not in result.err
    assert (tmp_path / "out/step_2/tunelib_complete.json").is_file() and not (tmp_path / "out/final").exists()
    assert [m["step"] for m in result.metrics] == [1, 2]


def test_nan_loss_can_be_skipped_up_to_a_limit(tune, folder, tmp_path, allow_support):
    result = finetune(tune, *LORA, folder, tmp_path / "out", *FAST, "on_nonfinite=skip",
                      "loss={_component_: support.faults.NaNLoss, at_call: 2}")
    assert result.code == 0, result.err
    assert "Skipping step 2: non-finite loss nan (1 in a row)" in result.out
    assert all(m["loss"] == m["loss"] for m in result.metrics)  # no NaN was logged or stepped on
    limited = finetune(tune, *LORA, folder, tmp_path / "b", *FAST, "on_nonfinite=skip", "max_nonfinite_skips=0",
                       "loss={_component_: support.faults.NaNLoss, at_call: 2}")
    assert limited.code == 1 and "non-finite loss nan at step 2" in limited.err


def test_an_infinite_gradient_norm_stops_before_the_step(tune, folder, tmp_path, allow_support):
    result = finetune(tune, *LORA, folder, tmp_path / "out", *FAST, "save_every_n_steps=1",
                      "loss={_component_: support.faults.InfGradLoss, at_call: 2}")
    assert result.code == 1
    assert "non-finite gradient norm" in result.err and "at step 2; stopped before the optimizer step" in result.err
    assert "Traceback" not in result.err
    assert (tmp_path / "out/step_1/tunelib_complete.json").is_file() and not (tmp_path / "out/step_2").exists()
    assert all(m["loss"] == m["loss"] for m in result.metrics)  # the loss itself stayed finite


@pytest.mark.slow
@pytest.mark.distributed
def test_nan_on_one_rank_stops_every_rank_and_names_it(folder, tmp_path):
    proc = _torchrun(folder, tmp_path / "out", "loss={_component_: support.faults.NaNLoss, at_call: 2, rank: 1}")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "non-finite loss nan at step 2 on rank 1" in proc.stderr


@pytest.mark.slow
@pytest.mark.distributed
def test_a_hanging_rank_ends_the_job_within_the_timeout(folder, tmp_path):
    start = time.monotonic()
    proc = _torchrun(folder, tmp_path / "out", "dist_timeout_seconds=8",
                     "loss={_component_: support.faults.HangingLoss, at_call: 2, rank: 1}")
    assert proc.returncode != 0
    assert time.monotonic() - start < 120
    assert "waited 8 s for rank(s) 1 at step 2" in proc.stderr, proc.stderr[-3000:]


def _torchrun(folder, out, *overrides, timeout=240):
    cmd = [sys.executable, "-m", "tunelib.cli.main", "run", "--nproc_per_node", "2", "lora_finetune_distributed",
           "--config", LORA[1], *words(folder, out, None, (*FAST, *overrides))]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env())


def _start(folder, out, *overrides, nproc=None):
    head = ["run", "--nproc_per_node", str(nproc), "lora_finetune_distributed"] if nproc else ["run", LORA[0]]
    cmd = [sys.executable, "-m", "tunelib.cli.main", *head, "--config", LORA[1],
           *words(folder, out, None, (*FAST, *overrides))]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())


def _wait_for(path: Path, proc, seconds: float = 120) -> None:
    end = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.2)


@pytest.mark.slow
def test_sigkill_during_a_save_leaves_the_previous_checkpoint_resumable(folder, tmp_path):
    out, pause = tmp_path / "out", tmp_path / "saving"
    proc = _start(folder, out, "max_steps_per_epoch=6", "save_every_n_steps=2",
                  f"checkpointer={{_component_: support.faults.SlowCheckpointer, checkpoint_dir: {folder}, "
                  f"output_dir: {out}, pause_at_step: 4, pause_file: {pause}}}")
    _wait_for(pause, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "step_2/tunelib_complete.json").is_file()
    assert not (out / "step_4").exists() and (out / ".step_4.tmp").is_dir()
    resumed = subprocess.run(
        [sys.executable, "-m", "tunelib.cli.main", "run", LORA[0], "--config", LORA[1],
         *words(folder, out, None, (*FAST, "max_steps_per_epoch=6", "save_every_n_steps=2", "resume_from_checkpoint=True"))],
        capture_output=True, text=True, timeout=240, env=env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Skipping incomplete checkpoint {out / '.step_4.tmp'}" in resumed.stdout
    assert f"Resuming from {out / 'step_2'}: step 2 of 6" in resumed.stdout
    assert (out / "step_4/tunelib_complete.json").is_file() and not (out / ".step_4.tmp").exists()


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_finishes_the_step_saves_and_exits(folder, tmp_path, sig, code):
    out = tmp_path / "out"
    proc = _start(folder, out, "max_steps_per_epoch=null", "epochs=200", "log_every_n_steps=1")
    _wait_for(out / "metrics.jsonl", proc)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr[-3000:]
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    saved = [p for p in out.glob("step_*") if (p / "tunelib_complete.json").is_file()]
    assert [p.name for p in saved] == [f"step_{last}"] and (saved[0] / "training_state.pt").is_file()
    assert f"Received {sig.name}" in stdout


@pytest.mark.slow
@pytest.mark.distributed
def test_sigterm_to_torchrun_saves_on_every_rank_and_resumes(folder, tmp_path):
    out = tmp_path / "out"
    proc = _start(folder, out, "max_steps_per_epoch=null", "epochs=200", nproc=2)
    _wait_for(out / "metrics.jsonl", proc, seconds=180)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 143, stderr[-3000:]
    saved = sorted(p for p in out.glob("step_*") if (p / "tunelib_complete.json").is_file())
    assert len(saved) == 1
    assert (saved[0] / "training_state_rank0.pt").is_file() and (saved[0] / "training_state_rank1.pt").is_file()
    assert (f"Resume with:\n  tune run --nproc_per_node 2 --allow-module support lora_finetune_distributed "
            f"--config {out / 'config.yaml'} resume_from_checkpoint=True") in stdout
    step = int(saved[0].name.split("_")[1])
    resumed = torchrun_finetune(2, "lora_finetune_distributed", LORA[1], folder, out, *FAST,
                                f"max_steps_per_epoch={step + 2}", "resume_from_checkpoint=True")
    assert resumed.code == 0, resumed.err[-3000:]
    assert f"step {step} of" in resumed.out
