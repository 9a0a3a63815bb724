#!/usr/bin/env python3
"""Side-by-side fine-tuning benchmark: tunelib vs torchtune 0.6.1 vs Hugging Face transformers + PEFT.

    python3 benchmarks/run.py --setup                  # once: the three virtual environments
    python3 benchmarks/run.py                          # CPU workloads (or GPU ones when CUDA is there)
    python3 benchmarks/run.py --workloads cpu-tiny-lora --repeats 5
    python3 benchmarks/run.py --list
    python3 benchmarks/run.py --threads 1              # every library on one core (less noise on a busy machine)
    python3 benchmarks/run.py --ablate --threads 1     # tunelib's CPU speed-ups one at a time (tunebench/ablate.py)

Every library does the same work: the same random Llama-3-shaped model (one Hugging Face
folder, `tunebench/assets.py`), the same LoRA A init, the same pre-tokenized packs in the
same order (`tunebench/data.py`), sequence length, batch, LoRA targets and rank, steps,
optimizer (AdamW, constant lr, no clipping) and precision (`tunebench/workloads.py`). Each
library runs in its own virtual environment under benchmarks/.venvs/ (made by --setup;
torchtune 0.6.1 needs torchao <= 0.15, PEFT refuses torchao < 0.16), through its own recipe
or Trainer (`tunebench/drivers/`). Runs of the libraries alternate, repeat by repeat, so a
busy moment on the machine does not fall on one library only.

Output in benchmarks/results/<date-time>/ (or --out): one JSON per run, the packs, meta.json
(machine, versions, command, measured CPU peak), summary.json, table.md and chart.png:
tokens/s (non-padding tokens, median over the timed steps after warm-up), peak memory (RSS
of steps 2..N on CPU; allocated and reserved on GPU), MFU (formula in `tunebench/flops.py`),
ratios to each peer (paired repeat by repeat), tokens per CPU-second (less disturbed by other
processes than wall time), and the largest loss difference to tunelib over all steps.

This script needs only the standard library; the venvs hold everything else.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENVS = BENCH / ".venvs"
WORK = BENCH / ".work"
LIBRARIES = ("tunelib", "torchtune", "peft")
DRIVERS = {lib: f"tunebench.drivers.run_{lib}" for lib in LIBRARIES}
sys.path.insert(0, str(BENCH))

from tunebench.workloads import CPU_WORKLOADS, GPU_WORKLOADS, WORKLOADS  # noqa: E402  (stdlib only)


def python(lib: str) -> str:
    return str(VENVS / lib / "bin" / "python")


# -- setup ------------------------------------------------------------------------------------


def requirements(lib: str, torch_spec: str, cuda: bool) -> list[str]:
    if lib == "tunelib":
        import tomllib

        deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
        return [torch_spec, *[d for d in deps if not d.startswith("torch>")], "matplotlib", "pyyaml"]
    if lib == "torchtune":
        return [torch_spec, "torchtune==0.6.1", "torchao<=0.15"]  # 0.6.1 imports only with torchao <= 0.15
    return [torch_spec, "transformers==5.23.0", "peft==0.21.2", "accelerate", *(["bitsandbytes"] if cuda else [])]


def setup(libs: list[str], torch_spec: str) -> None:
    cuda = shutil.which("nvidia-smi") is not None
    for lib in libs:
        venv = VENVS / lib
        print(f"== {lib}: {venv}", flush=True)
        if not (venv / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([python(lib), "-m", "pip", "install", "-q", *requirements(lib, torch_spec, cuda)], check=True)
        if lib == "tunelib":  # the checkout itself, so the benchmark always runs the working tree
            site = subprocess.run([python(lib), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip()
            Path(site, "tunelib_checkout.pth").write_text(str(REPO) + "\n")


# -- running ----------------------------------------------------------------------------------


THREADS: dict[str, str] = {}  # OMP_NUM_THREADS for every child, when --threads is given


class RunFailed(Exception):
    """A child process failed; the message names its log and ends with the log's last lines."""


def run_in(lib: str, args: list[str], log: Path, timeout: float | None = None) -> None:
    """Run `python args` in `lib`'s venv with the output in `log`; raise RunFailed if it fails."""
    env = {**os.environ, "PYTHONPATH": str(BENCH), "TOKENIZERS_PARALLELISM": "false", **THREADS}
    with open(log, "w") as f:
        try:
            done = subprocess.run([python(lib), *args], env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RunFailed(f"{lib} ran past --timeout {timeout:g} s; see {log}") from None
    if done.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise RunFailed(f"{lib} failed (exit {done.returncode}); last lines of {log}:\n{tail}")


def prepare(name: str, out: Path) -> Path:
    assets = WORK / "assets" / name
    run_in("tunelib", ["-m", "tunebench.prepare", "--workload", name, "--assets", str(assets),
                       "--packs", str(out / f"{name}.packs.json")], out / "logs" / f"{name}.prepare.log")
    return assets


def measure_cpu_peak(out: Path, when: str) -> dict:
    """The tunelib venv's fp32 matmul peak right now (see tunebench.flops)."""
    log = out / "logs" / f"cpu_peak_{when}.log"
    run_in("tunelib", ["-m", "tunebench.flops"], log)
    return json.loads(log.read_text().strip().splitlines()[-1])


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal"))
    gpu = ""
    if shutil.which("nvidia-smi"):
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem / 2**20, 1), "gpu": gpu,
            "os": platform.platform(), "load_average_at_start": os.getloadavg()}


def benchmark(names: list[str], libs: list[str], repeats: int, out: Path, timeout: float) -> None:
    (out / "logs").mkdir(parents=True, exist_ok=True)
    meta = {"date": dt.datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv), **THREADS,
            "machine": machine(), "libraries": libs, "repeats": repeats,
            "workloads": {n: WORKLOADS[n].to_dict() for n in names}}
    cpu = any(WORKLOADS[n].device == "cpu" for n in names)
    if cpu:
        meta.update(measure_cpu_peak(out, "start"))
        print(f"measured CPU fp32 matmul peak: {meta['cpu_fp32_peak'] / 1e9:.1f} GFLOP/s", flush=True)
    for name in names:
        assets = prepare(name, out)
        packs = out / f"{name}.packs.json"
        for r in range(repeats):
            for lib in libs[r % len(libs):] + libs[:r % len(libs)]:  # rotate who goes first
                tag = f"{name}__{lib}__r{r}"
                print(f"-- {tag}", flush=True)
                try:
                    run_in(lib, ["-m", DRIVERS[lib], "--workload", str(packs.with_suffix(".workload.json")),
                                 "--assets", str(assets), "--data", str(packs), "--workdir", str(WORK / "runs" / lib),
                                 "--out", str(out / f"{tag}.json")], out / "logs" / f"{tag}.log", timeout)
                except RunFailed as e:  # e.g. out of GPU memory: the table says so, the other runs go on
                    print(e, flush=True)
                    (out / f"{tag}.json").write_text(json.dumps({"error": str(e)}))
    meta["load_average_at_end"] = os.getloadavg()
    if cpu:  # other processes may have slowed the first measurement: MFU uses the better one
        end = measure_cpu_peak(out, "end")
        meta["cpu_fp32_peak_start_end"] = [meta["cpu_fp32_peak"], end["cpu_fp32_peak"]]
        meta["cpu_fp32_peak"] = max(meta["cpu_fp32_peak_start_end"])
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    run_in("tunelib", ["-m", "tunebench.report", str(out)], out / "logs" / "report.log")
    print((out / "table.md").read_text())
    print(f"results: {out}")


def ablate(names: list[str], out: Path, steps: int) -> None:
    """tunelib alone, each speed-up turned off in turn (see tunebench/ablate.py); writes ablation.md."""
    (out / "logs").mkdir(parents=True, exist_ok=True)
    rows = ["| workload | turned off | seconds per step | ÷ all on | max \\|Δloss\\| vs all on |", "|---|---|---:|---:|---:|"]
    for name in names:
        assets = prepare(name, out)
        packs = out / f"{name}.packs.json"
        log = out / "logs" / f"{name}.ablate.log"
        print(f"-- ablation of {name}", flush=True)
        run_in("tunelib", ["-m", "tunebench.ablate", "--workload", str(packs.with_suffix(".workload.json")),
                           "--assets", str(assets), "--data", str(packs), "--steps", str(steps),
                           "--out", str(out / f"{name}.ablation.json")], log)
        rows += [line for line in log.read_text().splitlines() if line.startswith("| ")]
    text = "\n".join(rows) + f"\n\nMedian CPU time of the process over {steps} steps per variant; {' '.join(sys.argv)}\n"
    (out / "ablation.md").write_text(text)
    print(text)
    print(f"results: {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setup", action="store_true", help="create/update the venvs under benchmarks/.venvs and exit")
    p.add_argument("--torch", default="torch==2.13.0", help="torch requirement for every venv (setup)")
    p.add_argument("--workloads", help="comma-separated names (default: GPU ones with CUDA, else CPU ones)")
    p.add_argument("--libraries", default=",".join(LIBRARIES))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, help="results folder (default benchmarks/results/<date-time>)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds one run may take")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS for every run (default: torch's choice)")
    p.add_argument("--list", action="store_true", help="print the workloads and exit")
    p.add_argument("--ablate", action="store_true", help="time tunelib's CPU speed-ups one at a time instead")
    a = p.parse_args()
    libs = a.libraries.split(",")
    if a.threads:
        THREADS["OMP_NUM_THREADS"] = str(a.threads)
    if a.list:
        for n, w in WORKLOADS.items():
            print(f"{n}: {w.method} {w.device} {w.dtype} seq {w.seq_len} batch {w.batch_size} {w.shape}")
        return
    if a.setup:
        setup(libs, a.torch)
        return
    missing = [lib for lib in libs if not Path(python(lib)).exists()]
    if missing:
        raise SystemExit(f"no venv for {', '.join(missing)}: run `python3 benchmarks/run.py --setup` first")
    names = a.workloads.split(",") if a.workloads else (GPU_WORKLOADS if shutil.which("nvidia-smi") else CPU_WORKLOADS)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise SystemExit(f"unknown workload(s) {', '.join(unknown)}; --list shows them")
    out = a.out or BENCH / "results" / dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    try:
        if a.ablate:
            ablate([n for n in names if WORKLOADS[n].device == "cpu"], out, steps=16)
            return
        benchmark(names, libs, a.repeats, out, a.timeout)
    except RunFailed as e:  # preparing the data or writing the report
        raise SystemExit(str(e)) from None


if __name__ == "__main__":
    main()
