"""Turn the drivers' JSON into figures, a markdown table and a PNG chart.

    python -m tunebench.report RESULTS_DIR      (run.py calls it in the tunelib venv, which has matplotlib)

Tokens/s counts non-padding tokens. Each timed step gives tokens/seconds; a run's figure is
the median over its timed steps, and a library's figure the median over its repeats. The
median keeps a step slowed by another process on the machine from moving the figure; the
mean over the timed window is kept in summary.json too.

Ratios are paired: repeat r of every library ran back to back (run.py rotates the order), so
each repeat gives one ratio, and the table shows their median and range. Tokens per CPU-second
(the process's CPU time, all threads) is less disturbed by other processes than wall time,
so its ratio is shown too. The loss check compares every step's loss with tunelib's; more
than LOSS_TOLERANCE[dtype] anywhere marks the row: a speed-up that changes the loss is a bug.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from tunebench import data
from tunebench.flops import H100_BF16_PEAK, flops_per_token, mfu
from tunebench.workloads import Workload

LIBRARIES = ("tunelib", "torchtune", "peft")
LABEL = {"tunelib": "tunelib", "torchtune": "torchtune 0.6.1", "peft": "HF transformers + PEFT"}
# Largest loss difference to tunelib, over all steps, that still counts as the same training.
# fp32: kernels differ only in summation order (~1e-6 seen). bf16: each library rounds differently.
LOSS_TOLERANCE = {"fp32": 1e-3, "bf16": 3e-2}


def step_tokens(packs: list[list[dict]], batch_size: int, steps: int) -> list[int]:
    return [sum(data.real_tokens(p) for p in packs[i * batch_size:(i + 1) * batch_size]) for i in range(steps)]


def run_figures(run: dict, w: Workload, tokens: list[int]) -> dict:
    """tokens/s (median and window mean over the timed steps), tokens per CPU-second, memory, losses of one run."""
    t, c = run["times"], run.get("cpu_times")
    timed = range(w.warmup_steps, w.steps)
    rates = [tokens[i] / (t[i] - t[i - 1]) for i in timed]
    window = sum(tokens[w.warmup_steps:w.steps]) / (t[w.steps - 1] - t[w.warmup_steps - 1])
    cpu_rate = statistics.median(tokens[i] / max(c[i] - c[i - 1], 1e-9) for i in timed) if c else None
    mem = run["memory"]
    peak = mem.get("peak_rss_gib", mem.get("peak_reserved_gib"))
    return {"tokens_per_s": statistics.median(rates), "tokens_per_s_window": window,
            "tokens_per_cpu_s": cpu_rate, "peak_gib": peak, "memory": mem, "losses": run["losses"]}


def _paired(ref: dict[int, dict], other: dict[int, dict], key: str, invert: bool = False) -> dict | None:
    """Median, min and max over the repeats both have of ref/other (other/ref with `invert`) for one figure."""
    pairs = [(ref[r][key], other[r][key]) for r in ref.keys() & other.keys() if ref[r][key] and other[r][key]]
    if not pairs:
        return None
    ratios = [b / a if invert else a / b for a, b in pairs]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def summarize(results: Path) -> dict:
    """Every library's figures per workload, with ratios to tunelib and the loss check."""
    meta = json.loads((results / "meta.json").read_text())
    out = {"meta": meta, "workloads": {}}
    for name, wd in meta["workloads"].items():
        w = Workload.from_dict(wd)
        _, packs = data.load(results / f"{name}.packs.json")
        tokens = step_tokens(packs, w.batch_size, w.steps)
        peak_flops = meta["cpu_fp32_peak"] if w.device == "cpu" else H100_BF16_PEAK
        figs, libs = {}, {}
        for lib in LIBRARIES:
            runs = {int(p.stem.rpartition("__r")[2]): json.loads(p.read_text())
                    for p in results.glob(f"{name}__{lib}__r*.json")}  # repeat -> run
            if not runs:
                continue
            failed = [r["error"] for _, r in sorted(runs.items()) if "error" in r]
            runs = {k: r for k, r in sorted(runs.items()) if "error" not in r}
            if not runs:
                libs[lib] = {"failed": failed[0]}
                continue
            figs[lib] = {k: run_figures(r, w, tokens) for k, r in runs.items()}
            f = list(figs[lib].values())
            runs = list(runs.values())
            tps = statistics.median(x["tokens_per_s"] for x in f)
            cpu = [x["tokens_per_cpu_s"] for x in f if x["tokens_per_cpu_s"]]
            libs[lib] = {
                "tokens_per_s": tps, "tokens_per_s_runs": [x["tokens_per_s"] for x in f],
                "tokens_per_s_window_runs": [x["tokens_per_s_window"] for x in f],
                "tokens_per_cpu_s": statistics.median(cpu) if cpu else None,
                "peak_gib": statistics.median(x["peak_gib"] for x in f),
                "memory_runs": [x["memory"] for x in f],
                "mfu": mfu(tps, w, peak_flops),
                "losses": f[0]["losses"], "version": runs[0].get("version"),
                "settings": runs[0].get("settings"), "batch_shape": runs[0].get("batch_shape"),
                "failed_runs": failed,
            }
        if "tunelib" in figs:
            ref = figs["tunelib"]
            first = next(iter(ref.values()))["losses"]
            for lib, f in figs.items():
                # Every repeat of every library against tunelib's first: runs must be deterministic too.
                diff = max(abs(a - b) for run in f.values() for a, b in zip(run["losses"], first))
                libs[lib].update({
                    "max_loss_diff_vs_tunelib": diff, "loss_agrees": diff <= LOSS_TOLERANCE[w.dtype],
                    "tunelib_speedup": _paired(ref, f, "tokens_per_s"),
                    "tunelib_speedup_cpu_time": _paired(ref, f, "tokens_per_cpu_s"),
                    "memory_vs_tunelib": _paired(ref, f, "peak_gib", invert=True),
                })
        out["workloads"][name] = {"workload": wd, "flops_per_token": flops_per_token(w),
                                  "peak_flops": peak_flops, "libraries": libs}
    return out


def _ratio(r: dict | None) -> str:
    if r is None:
        return "-"
    if abs(r["max"] - r["min"]) < 0.005:
        return f"{r['median']:.2f}x"
    return f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})"


def table(summary: dict) -> str:
    """The markdown table: one row per workload and library."""
    rows = ["| workload | library | tokens/s | tokens per CPU-s | peak memory (GiB) | MFU | "
            "tunelib speed ÷ this | same, by CPU time | this memory ÷ tunelib | max \\|Δloss\\| vs tunelib |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, wl in summary["workloads"].items():
        for lib, f in wl["libraries"].items():
            if "failed" in f:
                rows.append(f"| {name} | {LABEL[lib]} | failed: {f['failed'].splitlines()[0]} |" + " |" * 7)
                continue
            cpu = f"{f['tokens_per_cpu_s']:,.0f}" if f.get("tokens_per_cpu_s") else "-"
            mem = f.get("memory_vs_tunelib")
            diff = f.get("max_loss_diff_vs_tunelib")
            check = "-" if diff is None else f"{diff:.1e}" + ("" if f["loss_agrees"] else " **DIFFERS**")
            rows.append(f"| {name} | {LABEL[lib]} | {f['tokens_per_s']:,.0f} | {cpu} | {f['peak_gib']:.3f} | "
                        f"{100 * f['mfu']:.1f}% | {_ratio(f.get('tunelib_speedup'))} | "
                        f"{_ratio(f.get('tunelib_speedup_cpu_time'))} | {_ratio(mem)} | {check} |")
    return "\n".join(rows)


def chart(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["workloads"])
    fig, axes = plt.subplots(1, 2 + len(names), figsize=(5 * (2 + len(names)), 4))
    width = 0.8 / len(LIBRARIES)
    for k, lib in enumerate(LIBRARIES):
        xs = [i + k * width for i in range(len(names))]
        tps = [summary["workloads"][n]["libraries"].get(lib, {}).get("tokens_per_s", 0) for n in names]
        mem = [summary["workloads"][n]["libraries"].get(lib, {}).get("peak_gib", 0) for n in names]
        axes[0].bar(xs, tps, width, label=LABEL[lib])
        axes[1].bar(xs, mem, width, label=LABEL[lib])
    for ax, title in ((axes[0], "tokens/s (non-padding, higher is better)"),
                      (axes[1], "peak memory GiB (lower is better)")):
        ax.set_xticks([i + width for i in range(len(names))], names, fontsize=8)
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=8)
    for ax, n in zip(axes[2:], names):
        for lib, f in summary["workloads"][n]["libraries"].items():
            if "failed" in f:
                continue
            ax.plot(range(1, len(f["losses"]) + 1), f["losses"], label=LABEL[lib], marker=".")
        ax.set_title(f"loss per step: {n}", fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(results: Path) -> None:
    summary = summarize(results)
    (results / "summary.json").write_text(json.dumps(summary, indent=1))
    md = table(summary)
    (results / "table.md").write_text(md + "\n")
    chart(summary, results / "chart.png")
    print(md)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
