"""`tune compare`: runs side by side, from tunelib, torchtune and HF Trainer folders."""

from __future__ import annotations

import json

import numpy as np
import yaml
from safetensors.numpy import save_file


def _tunelib_run(folder, rank, lr, losses, val_loss, seconds=2.0):
    """A finished LoRA run's files, as `tune run` writes them (config, metrics, summary, adapter)."""
    (folder / "final" / "adapter").mkdir(parents=True)
    config = {"output_dir": str(folder), "seed": 0, "model": {"_component_": "tunelib.models.from_hf_config",
              "lora_attn_modules": ["q_proj", "v_proj"], "lora_rank": rank}, "optimizer": {"lr": lr}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    rows = [{"step": 10 * (i + 1), "loss": loss, "tokens": 100 * (i + 1)} for i, loss in enumerate(losses)]
    rows.append({"step": 10 * len(losses), "val_loss": val_loss})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"start_step": 0, "steps": 10 * len(losses), "trained_tokens": 100 * len(losses), "seconds": seconds,
               "trained_tokens_per_second": 100 * len(losses) / seconds, "peak_memory_gib": 0.5,
               "first_loss": losses[0], "last_loss": losses[-1], "best_loss": min(losses), "best_step": 10,
               "val_loss": val_loss}
    (folder / "summary.json").write_text(json.dumps(summary))
    # rank r on two 64x64 projections: A (r, 64) and B (64, r) each
    tensors = {f"{m}.lora_{ab}.weight": np.zeros((rank, 64) if ab == "A" else (64, rank), np.float32)
               for m in ("q", "v") for ab in ("A", "B")}
    save_file(tensors, str(folder / "final" / "adapter" / "adapter_model.safetensors"))


def _two_runs(tmp_path):
    _tunelib_run(tmp_path / "runs" / "r4", 4, 1e-3, [3.0, 2.0, 2.5], val_loss=2.4)
    _tunelib_run(tmp_path / "runs" / "r16", 16, 1e-3, [3.0, 1.5, 1.8], val_loss=1.9)
    return tmp_path / "runs"


def _row(out, name):
    return next(line.split() for line in out.splitlines() if line.startswith(name + " "))


def test_a_folder_with_no_runs_says_so_in_one_line(tune, tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    code, out, err = tune("compare", str(tmp_path / "empty"))
    assert code == 2 and err.startswith("tune: error: no runs in") and len(err.strip().splitlines()) == 1


def test_the_table_shows_what_differs_and_the_numbers_of_each_run(tune, tmp_path):
    code, out, err = tune("compare", str(_two_runs(tmp_path)))
    assert code == 0, err
    header = out.splitlines()[0].split()
    assert header[:2] == ["name", "model.lora_rank"]  # what differs; lr and seed are the same: no column
    assert "optimizer.lr" not in header and "seed" not in header and "output_dir" not in header
    for column in ("method", "trainable", "steps", "tokens", "time_s", "tokens/s", "peak_GiB", "first_loss",
                   "last_loss", "min_loss", "val_loss"):
        assert column in header
    row = dict(zip(header, _row(out, "r16")))
    assert row["model.lora_rank"] == "16" and row["method"] == "lora"
    assert row["trainable"] == f"{2 * 2 * 16 * 64:,}"  # counted from the adapter file's header
    assert (row["steps"], row["tokens"], row["first_loss"], row["last_loss"], row["min_loss"], row["val_loss"]) == \
        ("30", "300", "3.0000", "1.8000", "1.5000", "1.9000")


def test_sort_orders_the_runs_and_a_wrong_column_gets_did_you_mean(tune, tmp_path):
    runs = _two_runs(tmp_path)
    _, out, _ = tune("compare", str(runs), "--sort", "val_loss")
    assert [line.split()[0] for line in out.splitlines()[2:]] == ["r16", "r4"]
    _, out, _ = tune("compare", str(runs), "--sort=-val_loss")
    assert [line.split()[0] for line in out.splitlines()[2:]] == ["r4", "r16"]
    code, _, err = tune("compare", str(runs), "--sort", "val_los")
    assert code == 2 and "did you mean 'val_loss'" in err


def test_json_eval_scores_plot_and_html(tune, tmp_path):
    runs = _two_runs(tmp_path)
    eval_json = {"results": {"hellaswag": {"alias": "hellaswag", "acc,none": 0.31, "acc_stderr,none": 0.01}}}
    (runs / "r4" / "eval.json").write_text(json.dumps(eval_json))
    code, out, err = tune("compare", str(runs / "r4"), str(runs / "r16"), "--json")
    assert code == 0, err
    report = json.loads(out)
    by_name = {r["name"]: r for r in report["runs"]}
    assert "eval.hellaswag.acc" in report["columns"]
    assert by_name["r4"]["eval.hellaswag.acc"] == 0.31 and by_name["r16"]["eval.hellaswag.acc"] is None
    assert by_name["r4"]["train"][0] == [10, 100, 3.0] and by_name["r4"]["val"] == [[30, 300, 2.4]]

    code, out, err = tune("compare", str(runs), "--plot", str(tmp_path / "c.png"), "--html", str(tmp_path / "c.html"),
                          "--x", "tokens")
    assert code == 0, err
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "c.html").read_text()
    assert "<th>model.lora_rank</th>" in page and "data:image/png;base64," in page and "<td>r16</td>" in page


def test_reads_a_torchtune_disklogger_log_and_an_hf_trainer_state(tune, tmp_path):
    torchtune = tmp_path / "tt" / "logs"
    torchtune.mkdir(parents=True)
    (torchtune / "log_1700000000.txt").write_text(
        "Step 1 | loss:2.5 lr:0.0003 tokens_per_second_per_gpu:1000.0 peak_memory_alloc:3.5 \n"
        "Step 2 | loss:2.0 lr:0.0003 tokens_per_second_per_gpu:1200.0 peak_memory_alloc:3.6 \n")
    hf = tmp_path / "hf"
    (hf / "checkpoint-20").mkdir(parents=True)
    state = {"global_step": 20, "log_history": [
        {"step": 10, "loss": 2.2, "learning_rate": 1e-4, "epoch": 0.5},
        {"step": 20, "loss": 1.7, "learning_rate": 5e-5, "epoch": 1.0},
        {"step": 20, "eval_loss": 1.95, "epoch": 1.0},
        {"step": 20, "train_runtime": 8.0, "train_loss": 1.95}]}
    (hf / "checkpoint-20" / "trainer_state.json").write_text(json.dumps(state))
    (hf / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16}))
    code, out, err = tune("compare", str(tmp_path / "tt"), str(hf), "--json")
    assert code == 0, err
    by_name = {r["name"]: r for r in json.loads(out)["runs"]}
    tt, trainer = by_name["tt"], by_name["hf"]
    assert (tt["source"], tt["steps"], tt["first_loss"], tt["last_loss"]) == ("torchtune", 2, 2.5, 2.0)
    assert tt["tokens_per_second"] == 1100.0 and tt["peak_memory_gib"] == 3.6
    assert (trainer["source"], trainer["steps"], trainer["last_loss"], trainer["val_loss"]) == ("hf", 20, 1.7, 1.95)
    assert trainer["seconds"] == 8.0 and trainer["method"] == "lora"


def test_a_sweep_folder_lists_its_points_failed_ones_included(tune, tmp_path):
    folder = tmp_path / "sw"
    _tunelib_run(folder / "lora_rank-4", 4, 1e-3, [3.0, 2.0], val_loss=2.1)
    (folder / "lora_rank-8").mkdir()
    points = [{"name": "lora_rank-4", "overrides": {"model.lora_rank": "4"}, "status": "done"},
              {"name": "lora_rank-8", "overrides": {"model.lora_rank": "8"}, "status": "failed"}]
    (folder / "sweep.json").write_text(json.dumps({"points": points}))
    code, out, err = tune("compare", str(folder))
    assert code == 0, err
    header = out.splitlines()[0].split()
    assert header[:3] == ["name", "status", "model.lora_rank"]
    assert _row(out, "lora_rank-8")[:3] == ["lora_rank-8", "failed", "8"]


def test_plots_without_matplotlib_say_how_to_install_it(tune, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    code, _, err = tune("compare", str(_two_runs(tmp_path)), "--plot", str(tmp_path / "c.png"))
    assert code == 2 and "pip install 'tunelib[plots]'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c.png").exists()
