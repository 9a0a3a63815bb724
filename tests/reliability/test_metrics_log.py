"""metrics.jsonl after a resume holds each step once: a resume keeps the lines up to its checkpoint
(none when it found no checkpoint and starts over), and a line cut short does not stop it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.recipes import data_file, finetune, tiny_model_folder, words

LORA = ("lora_finetune_single_device", "llama3_2/1B_lora_tunelib")
FAST = ("lr_scheduler.num_warmup_steps=0", "optimizer.lr=3e-3", "log_every_n_steps=1")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("models"), "llama3_2")


def _steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _logged_lines(path: Path, proc: subprocess.Popen, at_least: int, seconds: float = 180) -> None:
    end = time.monotonic() + seconds
    while not path.exists() or len(path.read_text().splitlines()) < at_least:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < end, f"{path} never had {at_least} lines"
        time.sleep(0.2)


@pytest.mark.slow
def test_a_resume_after_a_kill_before_the_first_checkpoint_logs_each_step_once(tune, folder, tmp_path):
    out, data = tmp_path / "out", data_file(tmp_path)
    cmd = [sys.executable, "-m", "tunelib.cli.main", "run", LORA[0], "--config", LORA[1],
           *words(folder, out, data, (*FAST, "max_steps_per_epoch=null", "epochs=200", "save_every_n_steps=null"))]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        _logged_lines(out / "metrics.jsonl", proc, at_least=2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert not list(out.glob("step_*")) and (out / ".tunelib.lock").is_file()

    resumed = finetune(tune, *LORA, folder, out, *FAST, "max_steps_per_epoch=4", "resume_from_checkpoint=True",
                       data=data)
    assert resumed.code == 0, resumed.err[-3000:]
    assert f"No complete checkpoint in {out} yet: starting from the beginning" in resumed.out
    assert f"Taking over the lock of {out} left by pid {proc.pid} on host " in resumed.out  # kill -9 left it behind
    assert _steps(out) == [1, 2, 3, 4]
    assert not (out / ".tunelib.lock").exists()


def test_a_line_cut_short_at_the_end_of_the_log_does_not_stop_a_resume(tune, folder, tmp_path):
    out, data = tmp_path / "out", data_file(tmp_path)
    settings = (*FAST, "max_steps_per_epoch=4", "save_every_n_steps=2")
    first = finetune(tune, *LORA, folder, out, *settings, data=data)
    assert first.code == 0, first.err[-3000:]
    # As if the run had died while writing step 4's line (a full disk, a kill): no final/, a torn tail.
    shutil.rmtree(out / "final")
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("".join(line + "\n" for line in lines[:3]) + lines[3][:20])

    resumed = finetune(tune, *LORA, folder, out, *settings, "resume_from_checkpoint=True", data=data)
    assert resumed.code == 0, resumed.err[-3000:]
    assert f"Dropped 1 unreadable line(s) of {out / 'metrics.jsonl'} (a write cut short)" in resumed.out
    assert f"Resuming from {out / 'step_2'}: step 2 of 4" in resumed.out
    assert _steps(out) == [1, 2, 3, 4]
    assert resumed.losses == first.losses  # steps 1-2 kept, 3-4 trained again, exactly as before
