"""One run writes into an output_dir at a time: a second `tune run` (a new run, a resume, a
torchrun job) on a busy output_dir is refused in one line naming the owner, and changes nothing;
a lock left by a killed run is taken over; a refused run leaves no empty output folder behind."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.recipes import data_file, finetune, tiny_model_folder, words
from tunelib.checkpoint.lock import LOCK_NAME, OutputDirLock

LORA = ("lora_finetune_single_device", "llama3_2/1B_lora_tunelib")
FAST = ("lr_scheduler.num_warmup_steps=0", "optimizer.lr=3e-3", "max_steps_per_epoch=4", "save_every_n_steps=2")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("models"), "llama3_2")


def _snapshot(out: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder" for p in out.rglob("*")}


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 180) -> None:
    end = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.2)


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and not line.endswith(("examples/s]", "it/s]"))]
    assert "Traceback" not in err and len(lines) == 1, f"{len(lines)} lines on stderr:\n{err[-3000:]}"
    return lines[0]


@pytest.mark.slow
def test_a_second_run_on_a_busy_output_dir_is_refused_and_changes_nothing(tune, folder, tmp_path, allow_support):
    out, pause, data = tmp_path / "out", tmp_path / "saving", data_file(tmp_path)
    # The first run stops in the middle of writing step_2 (and stays there until killed).
    slow = (f"checkpointer={{_component_: support.faults.SlowCheckpointer, checkpoint_dir: {folder}, "
            f"output_dir: {out}, pause_at_step: 2, pause_file: {pause}}}")
    cmd = [sys.executable, "-m", "tunelib.cli.main", "run", LORA[0], "--config", LORA[1],
           *words(folder, out, data, (*FAST, slow))]
    env = dict(os.environ, PYTHONPATH=f"{REPO / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        _wait_for(pause, first)
        before = _snapshot(out)
        owner = f"is in use by another run (pid {first.pid} on host {socket.gethostname()}, started "
        for second in (("run", LORA[0], "--config", LORA[1]),  # a new run, and a resume of the running one
                       ("run", LORA[0], "--config", LORA[1], "resume_from_checkpoint=True"),
                       ("run", "--nproc_per_node", "2", "lora_finetune_distributed", "--config", LORA[1])):
            code, _, err = tune(*second, *words(folder, out, data, FAST))
            assert code == 2
            line = _one_line(err)
            assert line.startswith(f"tune: error: output_dir {out} {owner}") and "choose another output_dir" in line
            assert _snapshot(out) == before
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()

    # kill -9 left the lock file; its flock died with the process, so a resume takes it over.
    assert (out / LOCK_NAME).is_file()
    resumed = finetune(tune, *LORA, folder, out, *FAST, "resume_from_checkpoint=True", data=data)
    assert resumed.code == 0, resumed.err[-3000:]
    assert f"Taking over the lock of {out} left by pid {first.pid} on host {socket.gethostname()}" in resumed.out
    assert (out / "final/tunelib_complete.json").is_file() and not (out / LOCK_NAME).exists()


def test_a_lock_held_by_another_process_refuses_tune_run_in_one_line(folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    held = OutputDirLock.take(out)
    try:
        proc = subprocess.run([sys.executable, "-m", "tunelib.cli.main", "run", LORA[0], "--config", LORA[1],
                               *words(folder, out, data_file(tmp_path), FAST)],
                              capture_output=True, text=True, timeout=240, cwd=REPO)
    finally:
        held.release()
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("tune: error:")]
    assert "Traceback" not in proc.stderr and len(errors) == 1
    assert f"is in use by another run (pid {os.getpid()} on host {socket.gethostname()}, started " in errors[0]
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("refusal", [
    "resume_from_checkpoint=/no/such/step_2",  # refused after output_dir was made, before the model
    "dataset.data_files=EMPTY",                # refused at the data, after the model was loaded
], ids=["missing-resume-checkpoint", "empty-dataset"])
def test_a_refused_run_leaves_no_output_folder_it_made(tune, folder, tmp_path, refusal):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    refusal = refusal.replace("EMPTY", str(empty))
    made = tmp_path / "runs" / "today" / "out"
    result = finetune(tune, *LORA, folder, made, *FAST, refusal, data=data_file(tmp_path))
    assert result.code == 2 and "tune: error:" in result.err
    assert not (tmp_path / "runs").exists()

    existing = tmp_path / "mine"  # a folder the user made is kept, as it was
    existing.mkdir()
    result = finetune(tune, *LORA, folder, existing, *FAST, refusal, data=data_file(tmp_path))
    assert result.code == 2 and existing.is_dir() and list(existing.iterdir()) == []
