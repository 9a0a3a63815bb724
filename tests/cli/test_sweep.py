"""`tune sweep`: a grid of settings run as one run per point, with sweep.json, stop and resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from tunelib.experiments import grid, sweep

DEMO = ("lora_finetune_single_device", "--config", "demo/tiny_lora")
SHORT = ("epochs=1", "max_steps_per_epoch=2", "log_every_n_steps=1")  # seconds, not minutes, per point


def _state(folder):
    return {p["name"]: p for p in json.loads((folder / "sweep.json").read_text())["points"]}


def test_a_grid_key_that_is_not_a_setting_gets_did_you_mean_and_nothing_runs(tune, tmp_path):
    code, out, err = tune("sweep", *DEMO, "--grid", "model.lora_rnk=4,8", "--output-dir", str(tmp_path / "sw"))
    assert code == 2
    assert err.strip().startswith("tune: error:") and len(err.strip().splitlines()) == 1
    assert "did you mean 'model.lora_rank'" in err
    assert not (tmp_path / "sw").exists()


@pytest.mark.parametrize("words, message", [
    (("--grid", "model.lora_rank"), "give KEY=VALUE1,VALUE2"),
    (("--grid", "model.lora_rank=4,8", "--random", "3"), "the grid has 2 point(s)"),
    (("--grid", "model.lora_rank=4,8", "model.lora_rank=4"), "both an override and a --grid key"),
    (("--grid", "model.lora_rank=4,8", "--parallel", "0"), "--parallel 0: give 1 or more"),
    ((), "at least one --grid"),
])
def test_bad_sweep_options_are_one_line_errors(tune, tmp_path, words, message):
    code, _, err = tune("sweep", *DEMO, *words, "--output-dir", str(tmp_path / "sw"))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_points_are_the_grid_product_with_short_folder_names():
    g = grid.parse_grid(["model.lora_attn_modules=[q_proj,v_proj],[q_proj,k_proj,v_proj,o_proj]",
                         "optimizer._component_=torch.optim.AdamW,torch.optim.SGD"])
    assert g["model.lora_attn_modules"] == ["[q_proj,v_proj]", "[q_proj,k_proj,v_proj,o_proj]"]
    names = [p.name for p in grid.plan(g)]
    assert names == ["lora_attn_modules-q_proj+v_proj_optimizer-AdamW", "lora_attn_modules-q_proj+v_proj_optimizer-SGD",
                     "lora_attn_modules-q_proj+k_proj+v_proj+o_proj_optimizer-AdamW",
                     "lora_attn_modules-q_proj+k_proj+v_proj+o_proj_optimizer-SGD"]
    assert grid.plan(g)[1].words() == ["model.lora_attn_modules=[q_proj,v_proj]", "optimizer._component_=torch.optim.SGD"]


def test_random_points_are_distinct_points_of_the_grid_chosen_by_the_seed():
    g = grid.parse_grid(["model.lora_rank=4,8,16", "optimizer.lr=1e-3,3e-3"])
    drawn = grid.plan(g, random_points=4, seed=1)
    assert len({p.name for p in drawn}) == 4
    assert {p.name for p in drawn} <= {p.name for p in grid.plan(g)}
    assert drawn == grid.plan(g, random_points=4, seed=1)
    assert drawn != grid.plan(g, random_points=4, seed=2)


def test_parallel_runs_get_their_own_gpus():
    assert sweep.device_slots(2, ["0", "1", "2", "3"]) == ["0,1", "2,3"]
    assert sweep.device_slots(3, ["4", "5", "6"]) == ["4", "5", "6"]
    assert sweep.device_slots(2, ["0"]) == ["0", "0"]  # more runs than GPUs: they share
    assert sweep.device_slots(2, []) == [None, None]  # CPU: nothing pinned


@pytest.mark.slow
def test_a_failed_point_is_recorded_the_others_go_on_and_a_rerun_skips_finished_points(tune, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # two GPUs (the demo runs on the CPU anyway)
    folder = tmp_path / "sw"
    words = ("sweep", *DEMO, *SHORT, "--grid", "optimizer.lr=1e-3,-1", "--parallel", "2", "--output-dir", str(folder))
    code, out, _ = tune(*words)
    assert code == 1
    points = _state(folder)
    assert points["lr-1e-3"]["status"] == "done" and points["lr--1"]["status"] == "failed"
    assert "Invalid learning rate" in points["lr--1"]["error"]
    assert {p["cuda_visible_devices"] for p in points.values()} == {"3", "5"}  # one GPU each
    assert (folder / "lr-1e-3" / "summary.json").is_file() and (folder / "lr-1e-3" / "final").is_dir()
    assert "lr: -1" in (folder / "lr--1" / "config.yaml").read_text()  # its resolved config, though it failed
    assert f"output_dir: {folder / 'lr-1e-3'}" in (folder / "lr-1e-3" / "config.yaml").read_text()
    finished = (folder / "lr-1e-3" / "summary.json").stat().st_mtime_ns

    code, out, _ = tune(*words)
    assert code == 1 and "1 done before, skipped" in out
    points = _state(folder)
    assert points["lr-1e-3"]["attempts"] == 1 and points["lr--1"]["attempts"] == 2
    assert (folder / "lr-1e-3" / "summary.json").stat().st_mtime_ns == finished


@pytest.mark.slow
def test_a_stopped_sweep_resumes_its_interrupted_point_from_the_checkpoint(tmp_path):
    folder = tmp_path / "sw"
    cmd = [sys.executable, "-m", "tunelib.cli.main", "sweep", *DEMO, "epochs=1", "log_every_n_steps=1",
           "--grid", "model.lora_rank=4", "--output-dir", str(folder)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = folder / "lora_rank-4" / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 3) and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert _state(folder)["lora_rank-4"]["status"] == "stopped"
    assert "--output-dir" in out and not (folder / "lora_rank-4" / "summary.json").exists()

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "resuming from its checkpoint" in rerun.stdout
    summary = json.loads((folder / "lora_rank-4" / "summary.json").read_text())
    assert summary["start_step"] > 0 and summary["steps"] == 100
    assert _state(folder)["lora_rank-4"]["status"] == "done"


def test_a_second_sweep_in_the_same_folder_is_refused_while_the_first_runs(tune, tmp_path):
    folder = tmp_path / "sw"
    held = sweep.lock(folder)  # as the running sweep holds it
    try:
        code, _, err = tune("sweep", *DEMO, "--grid", "model.lora_rank=4,8", "--output-dir", str(folder))
    finally:
        held.close()
    assert code == 2 and "another tune sweep is running" in err
    assert not (folder / "sweep.json").exists()

