"""A real full disk: a small tmpfs (mounted by the test, which needs root; skipped otherwise)
fills up under the real writers (safetensors, torch.save, the completion marker, metrics.jsonl).

Each time the run ends with one line and the right exit code, no temporary file or folder keeps
the space, and the previous checkpoint resumes once space is freed.
"""

from __future__ import annotations

import pytest

from support.disk import fill, small_disk
from support.recipes import data_file, finetune, tiny_model_folder

LORA = ("lora_finetune_single_device", "llama3_2/1B_lora_tunelib")
FULL = ("full_finetune_single_device", "llama3_2/1B_full_tunelib")
# 6 steps, a checkpoint every 2; the disk fills after step_2, so the save of step 4 meets ENOSPC.
STEPS = ("max_steps_per_epoch=6", "save_every_n_steps=2", "log_every_n_steps=1")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("models"), "llama3_2")


@pytest.fixture
def disk(tmp_path):
    with small_disk(tmp_path / "disk") as mounted:
        yield mounted


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and not line.endswith(("examples/s]", "it/s]"))]
    assert "Traceback" not in err and len(lines) == 1, f"{len(lines)} lines on stderr:\n{err[-3000:]}"
    return lines[0]


def _leftovers(out) -> list[str]:
    """Temporary files and folders of tunelib that would keep the space."""
    return sorted(p.name for p in out.rglob("*") if p.name.endswith(".tmp") or ".tmp-" in p.name
                  or p.name.startswith(".tunelib_write_test_"))


@pytest.mark.slow
@pytest.mark.parametrize("recipe, fail_at", [
    (LORA, "first"),                  # safetensors (the adapter) raises its own SafetensorError
    (LORA, "training_state.pt"),      # torch.save raises "unexpected pos", the cause lost
    (LORA, "tunelib_complete.json"),  # everything written but the completion marker
    (FULL, "first"),                  # huggingface_hub's sharded safetensors writer
], ids=["lora-weights", "lora-training-state", "lora-marker", "full-weights"])
def test_a_save_that_fills_the_disk_stops_in_one_line_and_resumes_once_space_is_freed(
        tune, folder, disk, recipe, fail_at, allow_support):
    out, ballast = disk / "out", disk / "ballast"
    filling = (f"checkpointer={{_component_: support.disk.FillingCheckpointer, checkpoint_dir: {folder}, "
               f"output_dir: {out}, fill_after_step: 2, ballast: {ballast}, fail_at: {fail_at}}}")
    optimizer = ("optimizer._component_=torch.optim.AdamW",) if recipe == FULL else ()
    result = finetune(tune, *recipe, folder, out, *STEPS, *optimizer, filling)

    assert result.code == 1
    assert _one_line(result.err) == (f"tune: error: cannot write checkpoint {out / 'step_4'}: No space left on "
                                     f"device; {out / 'step_2'} is intact: fix the cause (free space, permissions), "
                                     "then rerun with resume_from_checkpoint=True")
    assert _leftovers(out) == [] and not (out / "step_4").exists()
    assert (out / "step_2/tunelib_complete.json").is_file() and not (out / ".tunelib.lock").exists()

    ballast.unlink()
    resumed = finetune(tune, *recipe, folder, out, *STEPS, *optimizer, "resume_from_checkpoint=True")
    assert resumed.code == 0, resumed.err[-3000:]
    assert f"Resuming from {out / 'step_2'}: step 2 of 6" in resumed.out
    assert [m["step"] for m in resumed.metrics if "loss" in m] == [1, 2, 3, 4, 5, 6]
    assert (out / "final/tunelib_complete.json").is_file() and _leftovers(out) == []


@pytest.mark.parametrize("existed", [False, True], ids=["new-output-dir", "existing-output-dir"])
def test_a_disk_full_before_the_run_refuses_it_in_one_line_and_leaves_nothing(tune, folder, disk, existed):
    out = disk / "runs" / "out"
    if existed:
        out.mkdir(parents=True)
    fill(disk / "ballast")
    result = finetune(tune, *LORA, folder, out, data=data_file(folder.parent))  # the data is not on the full disk

    assert result.code == 2
    assert _one_line(result.err) == f"tune: error: output_dir {out} is not writable: No space left on device"
    if existed:  # the user's folder stays, and stays empty
        assert out.is_dir() and list(out.iterdir()) == []
    else:  # the run made it, and took it away again
        assert not (disk / "runs").exists()


def test_a_full_disk_under_the_metrics_log_stops_in_one_line(tune, folder, disk, tmp_path):
    logs = disk / "logs"
    logs.mkdir()
    fill(disk / "ballast")
    out = tmp_path / "out"
    result = finetune(tune, *LORA, folder, out,
                      f"metric_logger={{_component_: tunelib.training.loggers.JSONLLogger, log_dir: {logs}}}")

    assert result.code == 1
    assert _one_line(result.err) == (f"tune: error: cannot write metrics to {logs / 'metrics.jsonl'} at step 1: "
                                     "No space left on device; free space (or fix permissions), then rerun with "
                                     "resume_from_checkpoint=True to continue from the last checkpoint")
    assert not (out / ".tunelib.lock").exists()



def test_a_disk_that_fills_while_the_run_is_set_up_stops_it_in_one_line(tune, folder, disk, allow_support):
    out = disk / "out"
    result = finetune(tune, *LORA, folder, out, f"loss={{_component_: support.disk.FillingLoss, ballast: {disk / 'b'}}}",
                      data=data_file(folder.parent))

    assert result.code == 2
    assert _one_line(result.err) == (f"tune: error: output_dir {out} is not writable: cannot write config.yaml: "
                                     "No space left on device")
    assert not out.exists()  # made by this run, left empty: removed again
