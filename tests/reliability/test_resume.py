"""Resume is exact in a fresh process, whatever the cut; config drift warns or refuses as
docs/reliability.md says (a change to the model, adapters, dtype, tokenizer or data is named in
one line); keep_last_n_checkpoints deletes only tunelib's older checkpoints, and a named resume
moves the branch it abandons aside; a finished run is extended exactly, or says there is nothing
left to train, also after a SIGTERM during its final save."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from support.recipes import ROWS, Result, data_file, finetune, tiny_model_folder, words
from tunelib.checkpoint import atomic

LORA = ("lora_finetune_single_device", "llama3_2/1B_lora_tunelib")
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


def _same_losses(resumed: list[float], straight: list[float]) -> bool:
    """The same run: bit for bit on a quiet machine. Under heavy CPU load (CI) a resumed run's loss
    has twice differed from the straight run's in its last bits (5e-7 of 6.46, from some step on),
    and fresh runs with no resume were bit-identical; a lost random state or data position moves
    losses by far more than 1e-6."""
    return resumed == pytest.approx(straight, rel=1e-6, abs=0)


def _same_weights(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> bool:
    """As `_same_losses`, for the saved tensors: AdamW divides by each weight's own gradient scale,
    so last-bit differences show as up to ~1e-7 on adapter entries of ~1e-2 (CI saw 1.2e-7); a lost
    random state redraws lora_A, and lost data moves entries by about the learning rate (3e-3)."""
    return ours.keys() == theirs.keys() and all(torch.allclose(ours[k], theirs[k], rtol=1e-4, atol=1e-6)
                                                for k in ours)


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
    assert _same_losses(resumed.losses, straight.losses[cut:])
    assert _same_weights(_adapter(resumed.output_dir), _adapter(straight.output_dir))


@pytest.mark.slow
def test_a_named_checkpoint_is_resumed_rather_than_the_newest(folder, data, straight, tmp_path):
    for step in (2, 4):
        shutil.copytree(straight.output_dir / f"step_{step}", tmp_path / f"out/step_{step}")
    resumed = _tune_process(folder, data, tmp_path / "out", f"resume_from_checkpoint={tmp_path / 'out/step_2'}")
    assert resumed.code == 0, resumed.err
    assert "step 2 of 8" in resumed.out and _same_losses(resumed.losses, straight.losses[2:])


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
    from tunelib.checkpoint.training_state import check_resume

    saved = {"settings": {"batch_size": 2, "world_size": 1}, "fingerprint": {}}
    with pytest.raises(Exception, match="world_size 1 -> 2 changed"):
        check_resume(saved, {"batch_size": 2, "world_size": 2}, {}, tmp_path)


@pytest.mark.parametrize("key, before, now", [("loss", {"_component_": "tunelib.training.DPOLoss", "beta": 0.1},
                                                {"_component_": "tunelib.training.DPOLoss", "beta": 0.5}),
                                               ("kd_ratio", 0.5, 0.25), ("teacher_checkpoint_dir", "/t/8B", "/t/70B")])
def test_a_resume_with_another_objective_warns(tmp_path, capsys, key, before, now):
    from tunelib.checkpoint.training_state import check_resume

    check_resume({"settings": {"batch_size": 2, key: before}, "fingerprint": None}, {"batch_size": 2, key: now}, {},
                 tmp_path)
    assert f"Warning: resuming with {key} changed ({before!r} -> {now!r})" in capsys.readouterr().err


@pytest.mark.parametrize("override, warning", [
    ("seed=7", "Warning: resuming with seed changed (0 -> 7): the checkpoint's seed and random state are kept"),
    ("epochs=3", "Warning: resuming with epochs changed (2 -> 3): the lr schedule is rebuilt for the new length"),
    ("optimizer.lr=1e-3", "Warning: resuming with optimizer changed"),
], ids=["seed", "epochs", "lr"])
def test_a_resume_with_other_settings_warns_and_continues(tune, folder, data, straight, tmp_path, override, warning):
    result = _resume_in_process(tune, folder, data, straight, tmp_path, override)
    assert result.code == 0, result.err
    assert warning in result.err
    if override.startswith("seed"):  # the saved random state wins, so the run is still exact
        assert _same_losses(result.losses, straight.losses[4:])


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


# -- settings that change the numbers (issue 17, point 5) --------------------------------------


@pytest.fixture(scope="module")
def other_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("other_models")
    return {"qwen": tiny_model_folder(root / "qwen", "qwen2"),
            "retrained": tiny_model_folder(root / "retrained", "llama3_2", seed=1)}  # same shapes, other weights


def _refused(result: Result, *expected: str) -> str:
    """The one error line of a refused resume (after the data's progress bars), checked."""
    assert result.code == 2, result.err[-3000:]
    assert "Traceback" not in result.err and "Traceback" not in result.out
    last = result.err.rstrip().split("\n")[-1]
    assert last.startswith("tune: error: cannot resume from"), last
    for text in expected:
        assert text in last, last
    # Refused before any write: no new checkpoint, log or config beside the copied one.
    assert sorted(p.name for p in result.output_dir.iterdir() if not p.name.startswith(".")) == ["step_4"]
    return last


@pytest.mark.parametrize("override, changed", [
    ("dtype=bf16", "dtype 'fp32' -> 'bf16'"),
    ("model.lora_dropout=0.1", "model.lora_dropout 0.2 -> 0.1"),
    ("model.lora_rank=4", "model.lora_rank 8 -> 4"),
    ("model.lora_attn_modules=[q_proj,k_proj,v_proj,o_proj]",
     "LoRA target modules ['down_proj', 'gate_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj'] -> "
     "['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj']"),
    ("tokenizer.max_seq_len=128", "tokenizer.max_seq_len 256 -> 128"),
    ("checkpoint_dir={qwen}", "model.config.architecture 'LlamaForCausalLM' -> 'Qwen2ForCausalLM'"),
    ("checkpoint_dir={retrained}", "checkpoint_dir weights 'sha256:"),
], ids=["dtype", "lora-dropout", "lora-rank", "lora-module-added", "max-seq-len", "other-model-family",
        "other-base-weights"])
def test_a_resume_that_changes_the_numbers_is_refused(tune, folder, data, straight, other_models, tmp_path, override,
                                                      changed):
    result = _resume_in_process(tune, folder, data, straight, tmp_path, override.format(**other_models))
    last = _refused(result, changed)
    assert last.endswith("; restore the old values or start a new output_dir")


def test_a_resume_on_rewritten_data_is_refused(tune, folder, tmp_path):
    data, out = data_file(tmp_path / "data"), tmp_path / "out"
    first = finetune(tune, *LORA, folder, out, "max_steps_per_epoch=2", "save_every_n_steps=1", data=data)
    assert first.code == 0, first.err
    shutil.rmtree(out / "final")  # as if killed after step 1
    rows = [dict(row) for row in ROWS]
    rows[0]["output"] = "8"  # the same path, the same number of rows, one answer changed
    data_file(tmp_path / "data", rows)
    before = _files(out)
    resumed = finetune(tune, *LORA, folder, out, "max_steps_per_epoch=2", "save_every_n_steps=1",
                       "resume_from_checkpoint=True", data=data)
    assert resumed.code == 2, resumed.err[-3000:]
    last = resumed.err.rstrip().split("\n")[-1]
    expected = f"tune: error: cannot resume from {out / 'step_1'}: dataset.data_files content 'sha256:"
    assert last.startswith(expected), last
    assert "changed, so the saved position in the data no longer applies" in last
    assert _files(out) == before


def test_a_checkpoint_saved_without_a_fingerprint_still_resumes_exactly(folder, data, straight, tmp_path):
    # What tunelib saved before it kept a fingerprint: the settings (the dataset node among them) only.
    shutil.copytree(straight.output_dir / "step_4", tmp_path / "out/step_4")
    path = tmp_path / "out/step_4/training_state.pt"
    state = torch.load(path, weights_only=True)
    del state["fingerprint"]
    assert "dataset" in state["settings"]
    torch.save(state, path)
    resumed = _tune_process(folder, data, tmp_path / "out", "resume_from_checkpoint=True")
    assert resumed.code == 0, resumed.err
    assert _same_losses(resumed.losses, straight.losses[4:])


@pytest.mark.slow
def test_a_named_resume_moves_the_abandoned_branch_aside_and_never_continues_it(tune, folder, data, straight, tmp_path):
    out = tmp_path / "out"
    for name in ("step_2", "step_4", "step_6", "final"):
        shutil.copytree(straight.output_dir / name, out / name)
    # Back to step 2, on another branch: 3 steps an epoch (6 in all), keeping one step checkpoint.
    branch = finetune(tune, *LORA, folder, out, *SETTINGS, f"resume_from_checkpoint={out / 'step_2'}",
                      "max_steps_per_epoch=3", "keep_last_n_checkpoints=1", data=data)
    assert branch.code == 0, branch.err
    aside = list((out / "abandoned").iterdir())
    assert len(aside) == 1 and sorted(p.name for p in aside[0].iterdir() if p.is_dir()) == ["final", "step_4", "step_6"]
    assert (f"Moved step_4, step_6, final to {aside[0]}: they come after {out / 'step_2'} on the branch this "
            "resume abandons (nothing deleted)") in branch.out
    for name in ("step_4", "step_6", "final"):  # the abandoned checkpoints, untouched
        old = load_file(aside[0] / name / "adapter/adapter_model.safetensors")
        theirs = load_file(straight.output_dir / name / "adapter/adapter_model.safetensors")
        assert all(torch.equal(old[k], theirs[k]) for k in theirs)
    # The checkpoint just written is kept, the older ones of this branch pruned.
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["abandoned", "final", "step_4"]
    assert json.loads((out / "step_4" / atomic.MARKER).read_text())["step"] == 4
    later = finetune(tune, *LORA, folder, out, *SETTINGS, "resume_from_checkpoint=True", "max_steps_per_epoch=3",
                     "epochs=3", "keep_last_n_checkpoints=1", data=data)
    assert later.code == 0, later.err
    assert f"Resuming from {out / 'final'}: step 6 of 9" in later.out


# -- a finished run can be extended (issue 17, point 7) ---------------------------------------

# A schedule that does not depend on the run's length: 4 steps, then 4 more, follow the same
# curve as 8 in one go (a cosine over 4 steps is another curve than one over 8).
CONSTANT = ("lr_scheduler._component_=tunelib.training.get_constant_schedule_with_warmup",)
FULL = ("full_finetune_single_device", "llama3_2/1B_full_tunelib")
FULL_SETTINGS = ("optimizer._component_=torch.optim.AdamW", "optimizer_in_bwd=False", "optimizer.lr=1e-3",
                 "gradient_accumulation_steps=2", "save_every_n_steps=2", "seed=3")


def _run(recipe: tuple[str, str], folder: Path, data: Path, output_dir: Path, *overrides: str) -> Result:
    settings = SETTINGS + CONSTANT if recipe == LORA else FULL_SETTINGS
    cmd = [sys.executable, "-m", "tunelib.cli.main", "run", recipe[0], "--config", recipe[1],
           *words(folder, output_dir, data, settings + overrides)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return Result(proc.returncode, proc.stdout, proc.stderr, output_dir)


def _final_weights(recipe: tuple[str, str], output_dir: Path) -> dict[str, torch.Tensor]:
    if recipe == LORA:
        return _adapter(output_dir)
    return load_file(output_dir / "final/model.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("recipe, first, longer", [
    (LORA, ("epochs=1", "max_steps_per_epoch=4"), ("epochs=1", "max_steps_per_epoch=8")),
    (LORA, ("epochs=1", "max_steps_per_epoch=4"), ("epochs=2", "max_steps_per_epoch=4")),
    (FULL, ("epochs=1", "max_steps_per_epoch=4"), ("epochs=1", "max_steps_per_epoch=8")),
], ids=["lora-more-steps", "lora-more-epochs", "full-more-steps"])
def test_a_finished_run_is_extended_exactly(folder, data, tmp_path, recipe, first, longer):
    straight = _run(recipe, folder, data, tmp_path / "straight", *longer)
    assert straight.code == 0, straight.err[-3000:]
    assert len(straight.losses) == 8
    out = tmp_path / "out"
    short = _run(recipe, folder, data, out, *first)
    assert short.code == 0, short.err[-3000:]
    # The last step is saved once, as final/ with its training state: no step_4 beside it.
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["final", "step_2"]
    state, weights = out / "final/training_state.pt", _final_weights(recipe, out)
    weight_bytes = sum(t.numel() * t.element_size() for t in weights.values())
    assert state.stat().st_size < 2.5 * weight_bytes + 64_000  # optimizer moments, not another copy of weights
    extended = _run(recipe, folder, data, out, *longer, "resume_from_checkpoint=True")
    assert extended.code == 0, extended.err[-3000:]
    assert f"Resuming from {out / 'final'}: step 4 of 8" in extended.out
    assert [m["step"] for m in extended.metrics if "loss" in m] == list(range(1, 9))
    assert _same_losses(extended.losses, straight.losses)
    assert _same_weights(_final_weights(recipe, out), _final_weights(recipe, tmp_path / "straight"))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_resuming_a_finished_run_with_nothing_left_says_so_and_writes_nothing(tune, folder, data, tmp_path):
    out = tmp_path / "out"
    done = finetune(tune, *LORA, folder, out, "max_steps_per_epoch=2", data=data)
    assert done.code == 0, done.err
    before = _files(out)
    again = finetune(tune, *LORA, folder, out, "max_steps_per_epoch=2", "resume_from_checkpoint=True", data=data)
    assert again.code == 0, again.err
    assert "Traceback" not in again.err
    assert [line for line in again.out.splitlines() if "Nothing left" in line] == [
        f"Nothing left to train: {out / 'final'} already ends this run (step 2; epochs=1, "
        "max_steps_per_epoch=2); raise epochs or max_steps_per_epoch to train further"]
    assert "Resuming from" not in again.out
    assert _files(out) == before


def test_a_final_checkpoint_without_a_training_state_is_refused_in_one_line(tune, folder, data, tmp_path):
    out = tmp_path / "out"
    done = finetune(tune, *LORA, folder, out, "max_steps_per_epoch=2", "save_every_n_steps=1", data=data)
    assert done.code == 0, done.err
    (out / "final/training_state.pt").unlink(missing_ok=True)  # as tunelib wrote final/ before it kept one
    again = finetune(tune, *LORA, folder, out, "max_steps_per_epoch=4", "save_every_n_steps=1",
                     "resume_from_checkpoint=True", data=data)
    assert again.code == 2
    assert again.err.rstrip().split("\n")[-1] == (
        f"tune: error: {out / 'final'} has no training state (tunelib kept none with the final model before), "
        f"so the finished run cannot be extended from it; set resume_from_checkpoint={out / 'step_1'} to "
        "continue from its last step checkpoint, or start a new output_dir")


@pytest.mark.slow
def test_sigterm_during_the_final_save_leaves_a_run_the_resume_command_accepts(folder, data, tmp_path):
    out, pause, go = tmp_path / "out", tmp_path / "saving", tmp_path / "go"
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=f"{repo / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               TUNELIB_ALLOW_MODULES="support", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "tunelib.cli.main", "run", LORA[0], "--config", LORA[1],
               *words(folder, out, data, ("max_steps_per_epoch=2",))]
    slow = (f"checkpointer={{_component_: support.pausing.PauseInFinalSave, checkpoint_dir: {folder}, "
            f"output_dir: {out}, pause_file: {pause}, go_file: {go}}}")
    proc = subprocess.Popen([*command, slow], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    end = time.monotonic() + 120
    while not pause.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < end
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)  # the final model is written; its training state and marker are not yet
    time.sleep(0.5)
    go.write_text("go")
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-3000:]
    assert "Received SIGTERM" in stdout and "Traceback" not in stderr
    assert (out / "final/training_state.pt").is_file() and (out / "final" / atomic.MARKER).is_file()
    printed = shlex.split(stdout.split("Resume with:\n", 1)[1].splitlines()[0])
    assert printed[:2] == ["tune", "run"] and printed[-1] == "resume_from_checkpoint=True", stdout[-2000:]
    resumed = subprocess.run([sys.executable, "-m", "tunelib.cli.main", *printed[1:]], capture_output=True, text=True,
                             timeout=300, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Nothing left to train: {out / 'final'} already ends this run (step 2;" in resumed.stdout
