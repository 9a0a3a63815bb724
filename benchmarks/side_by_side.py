"""What the one-step benchmarks (moe.py, dpo.py) share: a worker process per measurement, the
libraries' order alternating over repeats, and a table of medians with per-repeat ratios."""

from __future__ import annotations

import json
import statistics
import subprocess
from pathlib import Path
from typing import Callable


def peak_rss_gib() -> float:
    """This process's peak resident memory so far (VmHWM), in GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1024**3
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_process(library: str, cmd: list[str], env: dict) -> dict:
    """Run one worker; its last stdout line is its JSON result."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{library} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def interleaved(libraries: tuple[str, str], repeats: int, run: Callable[[str], dict]) -> list[dict]:
    """`run(library)` for each library, `repeats` times, the first library alternating; sorted by repeat."""
    runs = []
    for repeat in range(repeats):
        for library in libraries if repeat % 2 == 0 else libraries[::-1]:
            result = {**run(library), "repeat": repeat}
            print(json.dumps(result), flush=True)
            runs.append(result)
    return sorted(runs, key=lambda r: (r["repeat"], libraries.index(r["library"])))


def step_rows(runs: list[dict], ours: str, theirs: str) -> tuple[list[str], int]:
    """The table rows of step time, step CPU time and peak RSS (medians of `ours` and `theirs`, and
    the median and range of the per-repeat ratios ours ÷ theirs), and the number of repeats."""
    by = {lib: [r for r in runs if r["library"] == lib] for lib in (ours, theirs)}
    rows = []
    for key, label in (("step_s", "step time (s, median)"), ("step_cpu_s", "step CPU time (s, median)"),
                       ("peak_gib", "peak RSS (GiB, median)")):
        ratios = [a[key] / b[key] for a, b in zip(by[ours], by[theirs])]
        medians = [statistics.median(r[key] for r in by[lib]) for lib in (ours, theirs)]
        rows.append(f"| {label} | {medians[0]:.3f} | {medians[1]:.3f} "
                    f"| {statistics.median(ratios):.2f} [{min(ratios):.2f}–{max(ratios):.2f}] |")
    return rows, len(by[ours])
