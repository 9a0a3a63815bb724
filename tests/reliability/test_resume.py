"""Resume is exact in a fresh process, whatever the cut; config drift warns or refuses as
docs/reliability.md says; keep_last_n_checkpoints deletes only tunelib's older checkpoints."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from support.recipes import Result, data_file, finetune, tiny_model_folder, words
from tunelib.checkpoint import atomic

LORA = ("lora_finetune_single_device", "llama3_2/1B_lora")
# Dropout draws random numbers every step and accumulation spreads a step over two batches: a
# resume that lost the random state or the position in the data would show in the losses.
# 32 rows, 2 per batch, 2 batches per step: 8 steps an epoch, cut to 4 so that 2 epochs make 8.
SETTINGS = ("lr_scheduler.num_warmup_steps=2", "optimizer.lr=3e-3", "model.lora_dropout=0.2",
            "gradient_accumulation_steps=2", "epochs=2", "max_steps_per_epoch=4", "save_every_n_steps=2")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("models"), "llama3_2")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return data_file(tmp_path_factory.mktemp("data"))  # one path: a resume with other data is refused


@pytest.fixture(scope="module")
def straight(folder, data, tmp_path_factory) -> Result:
    """8 steps in one run, saving every 2."""
    root = tmp_path_factory.mktemp("straight")
    result = _tune_process(folder, data, root / "out")
    assert result.code == 0, result.err
    assert len(result.losses) == 8
    return result


def _tune_process(folder: Path, data: Path, output_dir: Path, *overrides: str) -> Result:
    """`tune run` in a process of its own, as after a crash."""
    cmd = [sys.executable, "-m", "tunelib.cli.main", "run", LORA[0], "--config", LORA[1],
           *words(folder, output_dir, data, SETTINGS + overrides)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return Result(proc.returncode, proc.stdout, proc.stderr, output_dir)


def _adapter(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(output_dir / "final/adapter/adapter_model.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("cut, where", [(4, "epoch 1 of 2"), (6, "epoch 2 of 2"), (2, "epoch 1 of 2")],
                         ids=["at-epoch-end", "inside-epoch-2", "inside-epoch-1"])
def test_a_fresh_process_resumes_exactly(folder, data, straight, tmp_path, cut, where):
    # Only the checkpoint of step `cut` survives, as if the run had been killed after it.
    shutil.copytree(straight.output_dir / f"step_{cut}", tmp_path / f"out/step_{cut}")
    resumed = _tune_process(folder, data, tmp_path / "out", "resume_from_checkpoint=True")
    assert resumed.code == 0, resumed.err
    resuming = [line for line in resumed.out.splitlines() if line.startswith("Resuming from")]
    assert resuming == [f"Resuming from {tmp_path / 'out' / f'step_{cut}'}: step {cut} of 8, {where}, lr "
                        + resuming[0].split(", lr ")[-1]]
    assert [m["step"] for m in resumed.metrics if "loss" in m] == list(range(cut + 1, 9))
    assert resumed.losses == straight.losses[cut:]  # bit for bit, not approximately
    ours, theirs = _adapter(resumed.output_dir), _adapter(straight.output_dir)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.slow
def test_a_named_checkpoint_is_resumed_rather_than_the_newest(folder, data, straight, tmp_path):
    for step in (2, 4):
        shutil.copytree(straight.output_dir / f"step_{step}", tmp_path / f"out/step_{step}")
    resumed = _tune_process(folder, data, tmp_path / "out", f"resume_from_checkpoint={tmp_path / 'out/step_2'}")
    assert resumed.code == 0, resumed.err
    assert "step 2 of 8" in resumed.out and resumed.losses == straight.losses[2:]


def _resume_in_process(tune, folder, data, straight, tmp_path, *overrides: str) -> Result:
    shutil.copytree(straight.output_dir / "step_4", tmp_path / "out/step_4")
    return finetune(tune, *LORA, folder, tmp_path / "out", *SETTINGS, "resume_from_checkpoint=True", *overrides,
                    data=data)


@pytest.mark.parametrize("override, changed", [
    ("batch_size=4", "batch_size 2 -> 4"),
    ("gradient_accumulation_steps=1", "gradient_accumulation_steps 2 -> 1"),
    ("dataset.split=train[:50%]", "dataset"),
], ids=["batch-size", "accumulation", "data"])
def test_a_resume_that_changed_the_data_position_is_refused(tune, folder, data, straight, tmp_path, override, changed):
    result = _resume_in_process(tune, folder, data, straight, tmp_path, override)
    assert result.code == 2
    last = result.err.rstrip().split("\n")[-1]  # after the data's progress bars
    assert last.startswith("tune: error: cannot resume from") and changed in last
    assert "no longer applies" in result.err and "Traceback" not in result.err
    assert not (tmp_path / "out/step_6").exists()  # refused before any step


def test_a_resume_with_another_world_size_is_refused(tmp_path):
    saved = {"batch_size": 2, "world_size": 1}
    with pytest.raises(Exception, match="world_size 1 -> 2 changed"):
        from tunelib.checkpoint.training_state import check_settings

        check_settings(saved, {"batch_size": 2, "world_size": 2}, tmp_path)


@pytest.mark.parametrize("override, warning", [
    ("seed=7", "Warning: resuming with seed changed (0 -> 7): the checkpoint's seed and random state are kept"),
    ("epochs=3", "Warning: resuming with epochs changed (2 -> 3): the run continues, but will not match"),
    ("optimizer.lr=1e-3", "Warning: resuming with optimizer changed"),
], ids=["seed", "epochs", "lr"])
def test_a_resume_with_other_settings_warns_and_continues(tune, folder, data, straight, tmp_path, override, warning):
    result = _resume_in_process(tune, folder, data, straight, tmp_path, override)
    assert result.code == 0, result.err
    assert warning in result.err
    if override.startswith("seed"):  # the saved random state wins, so the run is still exact
        assert result.losses == straight.losses[4:]


# -- keep_last_n_checkpoints ----------------------------------------------------------------------


def _complete(output_dir: Path, step: int) -> Path:
    with atomic.atomic_folder(output_dir / f"step_{step}", step=step, is_final=False) as tmp:
        (tmp / "weights").write_text(str(step))
    return output_dir / f"step_{step}"


def test_keep_last_n_deletes_only_older_complete_checkpoints_of_tunelib(tmp_path):
    for step in (1, 2, 3, 4):
        _complete(tmp_path, step)
    foreign = [tmp_path / "step_0", tmp_path / "my_notes", tmp_path / "step_9"]
    for path in foreign:  # user folders; step_9 looks newest but has no completion marker
        path.mkdir()
        (path / "keep.txt").write_text("mine")
    (tmp_path / ".step_5.tmp").mkdir()  # an interrupted save: not tunelib's to judge here

    deleted = atomic.prune(tmp_path, 2)

    assert sorted(p.name for p in deleted) == ["step_1", "step_2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".step_5.tmp", "my_notes", "step_0", "step_3",
                                                          "step_4", "step_9"]
    assert all((p / "keep.txt").read_text() == "mine" for p in foreign)


def test_keep_last_n_never_deletes_the_newest_complete_checkpoint(tmp_path):
    _complete(tmp_path, 1)
    _complete(tmp_path, 2)
    for keep in (None, 0, 1):
        atomic.prune(tmp_path, keep)
        assert (tmp_path / "step_2" / "weights").read_text() == "2"
    assert not (tmp_path / "step_1").exists()


def test_a_run_keeps_its_last_checkpoints_and_foreign_folders(tune, folder, tmp_path):
    out = tmp_path / "out"
    (out / "step_100").mkdir(parents=True)
    (out / "step_100" / "notes.txt").write_text("not a checkpoint")
    result = finetune(tune, *LORA, folder, out, "lr_scheduler.num_warmup_steps=0", "save_every_n_steps=1",
                      "keep_last_n_checkpoints=2", "max_steps_per_epoch=5")
    assert result.code == 0, result.err
    # The last step is saved as final/ only, so the newest two step checkpoints are 3 and 4.
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["final", "step_100", "step_3", "step_4"]
    assert (out / "step_100" / "notes.txt").read_text() == "not a checkpoint"
    assert json.loads((out / "step_4" / atomic.MARKER).read_text())["step"] == 4
