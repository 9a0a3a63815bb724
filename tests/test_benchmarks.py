"""benchmarks/: the cheap ways the harness can break, caught without its peer venvs.

Workload definitions, the FLOP/MFU formula on published shapes, the data views each library
gets, the report's ratios and loss check on made-up runs, tunelib's config for every
workload (GPU ones too), and two real steps of the tiny workload through the tunelib driver.
No timing is asserted: speed is measured by benchmarks/run.py, not by tests.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

from tunebench import data, flops, report  # noqa: E402
from tunebench.workloads import CPU_WORKLOADS, GPU_WORKLOADS, LLAMA_3_1_8B, LLAMA_3_2_1B, WORKLOADS, Workload  # noqa: E402


def test_workloads_cover_the_issue():
    assert CPU_WORKLOADS == ["cpu-tiny-lora", "cpu-tiny-full"]
    assert {(WORKLOADS[n].shape, WORKLOADS[n].method) for n in GPU_WORKLOADS} == {
        (s, m) for s in (LLAMA_3_2_1B, LLAMA_3_1_8B) for m in ("lora", "qlora", "full")}
    for name in CPU_WORKLOADS:
        assert WORKLOADS[name].device == "cpu" and WORKLOADS[name].dtype == "fp32"
    for name in GPU_WORKLOADS:
        w = WORKLOADS[name]
        assert (w.device, w.dtype, w.seq_len) == ("cuda", "bf16", 2048)
    for w in WORKLOADS.values():  # every driver reads the workload back from JSON
        assert Workload.from_dict(json.loads(json.dumps(w.to_dict()))) == w


@pytest.mark.parametrize(("shape", "params"), [(LLAMA_3_1_8B, 7.50e9), (LLAMA_3_2_1B, 1.236e9)])
def test_matmul_params_match_the_published_sizes(shape, params):
    w = Workload(name="x", shape=shape, method="lora", device="cuda", dtype="bf16", seq_len=2048,
                 batch_size=2, warmup_steps=1, timed_steps=1)
    assert flops.matmul_params(w) == pytest.approx(params, rel=2e-3)


def test_flops_per_token_and_mfu_on_llama_3_1_8b():
    # Reference values (shared/reference/performance.md §8.2): full 48.2 and LoRA 33.2 GFLOP/token at S=2048.
    lora = WORKLOADS["gpu-8b-lora"]
    full = WORKLOADS["gpu-8b-full"]
    attention = 12 * 32 * 2048 * 32 * 128
    assert flops.flops_per_token(full) == 6 * flops.matmul_params(full) + attention
    assert flops.flops_per_token(full) / 1e9 == pytest.approx(48.2, abs=0.05)
    assert flops.flops_per_token(lora) / 1e9 == pytest.approx(33.2, abs=0.05)
    assert flops.flops_per_token(WORKLOADS["gpu-8b-qlora"]) == flops.flops_per_token(lora)
    # 12,000 LoRA tokens/s on an H100 is about 40% MFU.
    assert flops.mfu(12_000, lora, flops.H100_BF16_PEAK) == pytest.approx(0.403, abs=0.001)


def test_every_library_sees_the_same_tokens_and_targets():
    packs = data.make_packs(vocab_size=100, seq_len=64, n_packs=6, mean_doc_len=12, seed=0)
    assert packs == data.make_packs(vocab_size=100, seq_len=64, n_packs=6, mean_doc_len=12, seed=0)
    for pack in packs:
        shifted, unshifted = data.as_shifted(pack, 64), data.as_unshifted(pack, 64)
        n = data.real_tokens(pack)
        assert 0 < n <= 64 and len(unshifted["tokens"]) == 64 and sum(unshifted["seq_lens"]) == 64
        assert shifted["tokens"] == unshifted["tokens"][:n]
        # The unshifted label of position i + 1 is the target of position i; a pack's last
        # token is a document's last, which has no target.
        assert shifted["labels"][:-1] == unshifted["labels"][1:n] and shifted["labels"][-1] == data.IGNORE
        trained = sum(y != data.IGNORE for y in shifted["labels"])
        assert trained == data.trained_tokens(pack) == sum(y != data.IGNORE for y in unshifted["labels"])


def _fake_results(folder: Path, w: Workload, losses: dict[str, list[float]], seconds: dict[str, float]) -> None:
    packs = data.make_packs(vocab_size=w.shape.vocab_size, seq_len=w.seq_len, n_packs=w.steps * w.batch_size,
                            mean_doc_len=w.mean_doc_len, seed=0)
    data.save(folder / f"{w.name}.packs.json", w.seq_len, packs)
    (folder / "meta.json").write_text(json.dumps({"cpu_fp32_peak": 1e11, "workloads": {w.name: w.to_dict()}}))
    for lib, step in seconds.items():
        for r in range(2):
            times = [step * (i + 1) for i in range(w.steps)]
            run = {"times": times, "cpu_times": [2 * t for t in times], "losses": losses[lib],
                   "memory": {"peak_rss_gib": {"tunelib": 1.0, "torchtune": 1.5, "peft": 2.0}[lib]}}
            (folder / f"{w.name}__{lib}__r{r}.json").write_text(json.dumps(run))


def test_report_ratios_and_loss_check(tmp_path):
    w = WORKLOADS["cpu-tiny-lora"]
    good = [9.0 - 0.01 * i for i in range(w.steps)]
    bad = [x + (0.01 if i == 5 else 0.0) for i, x in enumerate(good)]
    _fake_results(tmp_path, w, {"tunelib": good, "torchtune": good, "peft": bad},
                  {"tunelib": 1.0, "torchtune": 1.5, "peft": 2.0})
    summary = report.summarize(tmp_path)
    libs = summary["workloads"][w.name]["libraries"]
    assert libs["torchtune"]["tunelib_speedup"]["median"] == pytest.approx(1.5)
    assert libs["peft"]["tunelib_speedup_cpu_time"]["median"] == pytest.approx(2.0)
    assert libs["torchtune"]["memory_vs_tunelib"]["median"] == pytest.approx(1.5)
    assert libs["torchtune"]["loss_agrees"] and not libs["peft"]["loss_agrees"]
    tokens = report.step_tokens(data.load(tmp_path / f"{w.name}.packs.json")[1], w.batch_size, w.steps)
    expected = statistics.median(tokens[i] / 1.0 for i in range(w.warmup_steps, w.steps))
    assert libs["tunelib"]["tokens_per_s"] == pytest.approx(expected)
    assert libs["tunelib"]["mfu"] == pytest.approx(flops.mfu(expected, w, 1e11))
    md = report.table(summary)
    assert "**DIFFERS**" in md and md.count("\n") == 4  # header, rule, three libraries


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_tunelib_driver_config_is_valid(name, tmp_path, monkeypatch):
    from tunebench.driver_io import Job
    from tunebench.drivers import run_tunelib

    import yaml

    from tunelib.config import build_config
    from tunelib.training.settings import FullSettings, LoRASettings

    monkeypatch.setenv("TUNELIB_ALLOW_MODULES", "tunebench")
    w = WORKLOADS[name]
    job = Job(w, tmp_path / "model", tmp_path / "lora_init.safetensors", tmp_path / "packs.json", tmp_path, tmp_path / "o")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(run_tunelib.config(job)))
    cfg = build_config(path, [], FullSettings if w.method == "full" else LoRASettings)
    assert cfg.batch_size == w.batch_size and cfg.dtype == w.dtype and cfg.compile == w.compile


def test_tunelib_driver_runs_two_steps_of_the_tiny_workload(tmp_path):
    from tunebench import assets

    w = Workload.from_dict({**WORKLOADS["cpu-tiny-lora"].to_dict(), "warmup_steps": 1, "timed_steps": 1})
    root = assets.make_model_folder(tmp_path / "assets" / w.name, w)
    packs = data.make_packs(vocab_size=w.shape.vocab_size, seq_len=w.seq_len, n_packs=w.steps * w.batch_size,
                            mean_doc_len=w.mean_doc_len, seed=w.seed)
    data.save(tmp_path / "packs.json", w.seq_len, packs)
    (tmp_path / "workload.json").write_text(json.dumps(w.to_dict()))
    out = tmp_path / "result.json"
    env = {**os.environ, "PYTHONPATH": str(BENCH), "OMP_NUM_THREADS": "2"}
    done = subprocess.run(
        [sys.executable, "-m", "tunebench.drivers.run_tunelib", "--workload", str(tmp_path / "workload.json"),
         "--assets", str(root), "--data", str(tmp_path / "packs.json"), "--workdir", str(tmp_path / "work"),
         "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert len(result["times"]) == len(result["cpu_times"]) == len(result["losses"]) == 2
    assert all(math.isfinite(x) for x in result["losses"])
    assert abs(result["losses"][0] - math.log(w.shape.vocab_size)) < 0.2  # random weights: near uniform
    assert result["batch_shape"] == [w.batch_size, w.seq_len]  # padded to the full pack, as the peers are
    assert result["settings"]["optimizer"]["fused"] is True
    assert result["memory"]["peak_rss_gib"] > 0


def test_report_pairs_repeats_and_names_failed_libraries(tmp_path):
    w = WORKLOADS["cpu-tiny-full"]
    losses = [9.0] * w.steps
    _fake_results(tmp_path, w, {lib: losses for lib in ("tunelib", "torchtune", "peft")},
                  {"tunelib": 1.0, "torchtune": 1.5, "peft": 2.0})
    (tmp_path / f"{w.name}__tunelib__r0.json").write_text(json.dumps({"error": "tunelib failed (exit 1)"}))
    for r in range(2):
        (tmp_path / f"{w.name}__peft__r{r}.json").write_text(json.dumps({"error": "peft failed: out of memory"}))
    summary = report.summarize(tmp_path)
    libs = summary["workloads"][w.name]["libraries"]
    assert libs["tunelib"]["failed_runs"] == ["tunelib failed (exit 1)"]
    assert libs["torchtune"]["tunelib_speedup"] == pytest.approx({"median": 1.5, "min": 1.5, "max": 1.5})  # repeat 1
    assert libs["peft"] == {"failed": "peft failed: out of memory"}
    assert "| failed: peft failed: out of memory |" in report.table(summary)


def test_doc_commands_name_real_workloads_and_options():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "performance.md").read_text()
    commands = [line.strip() for line in doc.splitlines() if line.strip().startswith("python3 benchmarks/run.py")]
    assert len(commands) >= 5
    helped = subprocess.run([sys.executable, str(BENCH / "run.py"), "--help"], capture_output=True, text=True).stdout
    for command in commands:
        words = command.split("#")[0].split()[2:]
        for i, word in enumerate(words):
            if word.startswith("--"):
                assert word in helped, command
            if words[i - 1] == "--workloads":
                assert set(word.split(",")) <= set(WORKLOADS), command


@pytest.mark.slow
def test_gpu_check_runs_end_to_end_in_its_quick_form(tmp_path):
    """benchmarks/gpu_check.py --quick: the script that will run on a GPU, on tiny shapes here."""
    env = dict(os.environ, HF_DATASETS_DISABLE_PROGRESS_BARS="1")
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--quick", "--workloads", "gpu-8b-lora",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["machine"]["torch"] and "torchao" in result["machine"]["packages"]
    cases = {(r["case"], r["backend"]) for r in result["attention"]}
    assert {("causal", "sdpa"), ("packed", "sdpa"), ("packed", "flex"), ("soft-cap 50", "flex")} <= cases
    ran = [r for r in result["attention"] if "skipped" not in r]
    assert {r["backend"] for r in ran} >= {"sdpa"} and all(r.get("finite") for r in ran), result["attention"]
    # torch 2.13 trains through flex attention on CUDA only: on CPU its rows say why they did not run.
    assert all("flex" in r["skipped"] for r in result["attention"] if "skipped" in r)
    assert result["syncs"]["graph_breaks"] == 0
    (lora,) = result["training"]
    assert lora["tokens_per_second"] > 0 and 0 < lora["mfu"] < 1 and len(lora["losses"]) == 3
    assert lora["estimate_gib"] > 0  # what build_run estimated before loading, beside the measured peak
    assert "| gpu-8b-lora |" in (tmp_path / "table.md").read_text()
