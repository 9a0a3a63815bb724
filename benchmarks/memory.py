#!/usr/bin/env python3
"""Peak memory of tunelib fine-tuning, one process against 2 and 4 (gloo on CPU), by phase.

    python3 benchmarks/memory.py                       # LoRA and full, 1, 2 and 4 processes
    python3 benchmarks/memory.py --methods lora --procs 1 2 --repeats 2

A random-init Llama-shaped Hugging Face folder of about 1.3 GiB in fp32 (350M parameters, 10
layers, 4 safetensors shards) is written once under --work. Each run is a two-step fine-tune
(one row of 128 tokens per micro-batch on each process, 4 rows per step in all, so every run
has the same losses) through `tune run`, with `tunebench/memory_recipe.py` reading the kernel's
peak resident memory (VmHWM) of every rank for each phase: load (everything before the first
step), train (the steps), save (the final folder). The report gives the largest rank's
figure, and each as a multiple of the weights' bytes, beside the peak per process that `tune
run` estimated at start (tunelib/training/estimate.py) and its ratio to the training phase's.
Also checked: every run's losses equal the one-process run's.

Results go to --out (default benchmarks/results/memory-<time>/): runs.json and table.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from tunebench.assets import hf_config, weight_shapes, write_tokenizer  # noqa: E402
from tunebench.workloads import Shape  # noqa: E402

SHAPE = Shape(vocab_size=32000, hidden_size=1536, intermediate_size=4096, num_hidden_layers=10,
              num_attention_heads=12, num_key_value_heads=4)
SHARDS = 4
# Rows per optimizer step over all processes: one row (128 tokens) per micro-batch on each, and
# as many micro-batches as it takes, so every run trains on the same rows and has the same losses.
GLOBAL_BATCH = 4
GIB = 1024**3

CONFIG = """
output_dir: {out}
checkpoint_dir: {model}
model:
  _component_: tunelib.models.from_hf_config
{adapters}
tokenizer: {{_component_: tunelib.tokenizers.from_pretrained, path: {model}, max_seq_len: 128}}
dataset: {{_component_: tunelib.data.text_completion_dataset, source: json, data_files: {data}, column: text}}
method: {method}
seed: 0
shuffle: false
batch_size: 1
gradient_accumulation_steps: {accumulation}
max_steps_per_epoch: 2
optimizer: {{_component_: torch.optim.AdamW, lr: 1.0e-4}}
dtype: fp32
device: cpu
log_peak_memory_stats: false
"""
LORA = "  lora_attn_modules: [q_proj, v_proj]\n  lora_rank: 8\n  lora_alpha: 16"


def write_model(folder: Path) -> int:
    """The model folder (once); returns the weights' bytes."""
    import torch
    from safetensors.torch import save_file

    shapes = weight_shapes(SHAPE)
    total = sum(4 * _numel(s) for s in shapes.values())
    if (folder / "model.safetensors.index.json").is_file():
        return total
    folder.mkdir(parents=True, exist_ok=True)
    names = list(shapes)
    per_shard = -(-len(names) // SHARDS)
    weight_map, g = {}, torch.Generator().manual_seed(0)
    for i in range(SHARDS):
        file = f"model-{i + 1:05d}-of-{SHARDS:05d}.safetensors"
        part = {}
        for name in names[i * per_shard:(i + 1) * per_shard]:
            size = shapes[name]
            part[name] = torch.ones(size) if name.endswith("norm.weight") else torch.randn(size, generator=g) * 0.02
            weight_map[name] = file
        save_file(part, str(folder / file), metadata={"format": "pt"})
        del part
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                      "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(hf_config(SHAPE, "fp32"), indent=1))
    write_tokenizer(folder, SHAPE.vocab_size)
    return total


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def write_data(path: Path) -> None:
    rows = [{"text": " ".join(f"t{3 + (r * 131 + i * 7) % 31000}" for i in range(140))} for r in range(16)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def run_one(work: Path, method: str, procs: int, repeat: int) -> dict:
    out = work / "runs" / f"{method}-{procs}-{repeat}"
    shutil.rmtree(out, ignore_errors=True)
    config = work / f"{method}.yaml"
    config.write_text(CONFIG.format(out=out, model=work / "model", data=work / "data.jsonl", method=method,
                                    adapters=LORA if method == "lora" else "", accumulation=GLOBAL_BATCH // procs))
    launch = ["--nproc_per_node", str(procs)] if procs > 1 else []
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_DATASETS_DISABLE_PROGRESS_BARS="1")
    cmd = [sys.executable, "-m", "tunelib.cli.main", "run", *launch, str(HERE / "tunebench/memory_recipe.py"),
           "--config", str(config)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"method": method, "procs": procs, "repeat": repeat, "error": proc.stderr[-2000:]}
    ranks = [json.loads((out / f"memory_rank{r}.json").read_text()) for r in range(procs)]
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"method": method, "procs": procs, "repeat": repeat, "losses": losses,
            "peak_gib": {phase: max(r[phase] for r in ranks) for phase in ("load", "train", "save")},
            "estimate_gib": _printed_estimate(proc.stdout)}


def _printed_estimate(stdout: str) -> float | None:
    """The peak per process `tune run` estimated at start (tunelib.training.estimate), in GiB."""
    match = re.search(r"^Estimated peak memory: ([\d.]+) GiB", stdout, re.MULTILINE)
    return float(match.group(1)) if match else None


def table(runs: list[dict], weights: int) -> str:
    lines = ["| method | processes | load GiB | train GiB | save GiB | peak GiB | peak ÷ weights | ÷ 1-process peak "
             "| estimate GiB | estimate ÷ train |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    one = {}
    for run in sorted((r for r in runs if "peak_gib" in r), key=lambda r: (r["method"], r["procs"])):
        peak = max(run["peak_gib"].values())
        if run["procs"] == 1:
            one[run["method"]] = peak
        base = one.get(run["method"])
        ratio = f"{peak / base:.2f}" if base else ""
        p = run["peak_gib"]
        estimate = run.get("estimate_gib")
        versus = f"{estimate:.2f} | {estimate / p['train']:.2f}" if estimate else " | "
        lines.append(f"| {run['method']} | {run['procs']} | {p['load']:.2f} | {p['train']:.2f} | {p['save']:.2f} "
                     f"| {peak:.2f} | {peak * GIB / weights:.2f}x | {ratio} | {versus} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    parser.add_argument("--procs", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--work", type=Path, default=HERE / "results" / "memory-work")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or HERE / "results" / f"memory-{dt.datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    weights = write_model(args.work / "model")
    write_data(args.work / "data.jsonl")
    runs = []
    for repeat in range(args.repeats):
        for method in args.methods:
            for procs in args.procs:
                run = run_one(args.work, method, procs, repeat)
                print(json.dumps(run), flush=True)
                runs.append(run)
    reference = {r["method"]: r["losses"] for r in runs if r.get("procs") == 1 and "losses" in r}
    for run in runs:
        if "losses" in run and run["method"] in reference:
            run["max_loss_difference_to_one_process"] = max(
                abs(a - b) for a, b in zip(run["losses"], reference[run["method"]], strict=True))
    (out / "runs.json").write_text(json.dumps({"weights_bytes": weights, "runs": runs}, indent=1))
    text = table(runs, weights)
    (out / "table.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
