"""Turn the drivers' JSON into figures, a markdown table and a PNG chart.

    python -m tunebench.report RESULTS_DIR      (run.py calls it in the tunelib venv, which has matplotlib)

Tokens/s counts non-padding tokens. Each timed step gives tokens/seconds; a run's figure is
the median over its timed steps, and a library's figure the median over its repeats. The
median keeps a step slowed by another process on the machine from moving the figure; the
mean over the timed window is kept in summary.json too.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from tunebench import data
from tunebench.flops import H100_BF16_PEAK, flops_per_token
from tunebench.workloads import Workload

LIBRARIES = ("tunelib", "torchtune", "peft")
LABEL = {"tunelib": "tunelib", "torchtune": "torchtune 0.6.1", "peft": "HF transformers + PEFT"}


def step_tokens(packs: list[list[dict]], batch_size: int, steps: int) -> list[int]:
    return [sum(data.real_tokens(p) for p in packs[i * batch_size:(i + 1) * batch_size]) for i in range(steps)]


def run_figures(run: dict, w: Workload, tokens: list[int]) -> dict:
    """tokens/s (median and window mean over the timed steps), memory, losses of one run."""
    t = run["times"]
    rates = [tokens[i] / (t[i] - t[i - 1]) for i in range(w.warmup_steps, w.steps)]
    window = sum(tokens[w.warmup_steps:w.steps]) / (t[w.steps - 1] - t[w.warmup_steps - 1])
    mem = run["memory"]
    peak = mem.get("peak_rss_gib", mem.get("peak_reserved_gib"))
    return {"tokens_per_s": statistics.median(rates), "tokens_per_s_window": window, "peak_gib": peak,
            "memory": mem, "losses": run["losses"]}


def summarize(results: Path) -> dict:
    meta = json.loads((results / "meta.json").read_text())
    out = {"meta": meta, "workloads": {}}
    for name, wd in meta["workloads"].items():
        w = Workload.from_dict(wd)
        _, packs = data.load(results / f"{name}.packs.json")
        tokens = step_tokens(packs, w.batch_size, w.steps)
        peak_flops = meta["cpu_fp32_peak"] if w.device == "cpu" else H100_BF16_PEAK
        libs = {}
        for lib in LIBRARIES:
            runs = [json.loads(p.read_text()) for p in sorted(results.glob(f"{name}__{lib}__r*.json"))]
            if not runs:
                continue
            figs = [run_figures(r, w, tokens) for r in runs]
            tps = statistics.median(f["tokens_per_s"] for f in figs)
            libs[lib] = {
                "tokens_per_s": tps, "tokens_per_s_runs": [f["tokens_per_s"] for f in figs],
                "tokens_per_s_window_runs": [f["tokens_per_s_window"] for f in figs],
                "peak_gib": statistics.median(f["peak_gib"] for f in figs),
                "memory_runs": [f["memory"] for f in figs],
                "mfu": tps * flops_per_token(w) / peak_flops,
                "losses": figs[0]["losses"], "version": runs[0].get("version"),
                "settings": runs[0].get("settings"),
            }
        ref = libs.get("tunelib")
        for lib, f in libs.items():
            if ref is not None:
                f["max_loss_diff_vs_tunelib"] = max(abs(a - b) for a, b in zip(f["losses"], ref["losses"]))
        out["workloads"][name] = {"workload": wd, "flops_per_token": flops_per_token(w),
                                  "peak_flops": peak_flops, "libraries": libs}
    return out


def table(summary: dict) -> str:
    rows = ["| workload | library | tokens/s | peak memory (GiB) | MFU | tunelib speed ÷ this | "
            "this memory ÷ tunelib | max \\|Δloss\\| vs tunelib |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, wl in summary["workloads"].items():
        libs = wl["libraries"]
        ref = libs.get("tunelib")
        for lib, f in libs.items():
            speed = f"{ref['tokens_per_s'] / f['tokens_per_s']:.2f}x" if ref else "-"
            mem = f"{f['peak_gib'] / ref['peak_gib']:.2f}" if ref else "-"
            diff = f"{f.get('max_loss_diff_vs_tunelib', float('nan')):.1e}"
            rows.append(f"| {name} | {LABEL[lib]} | {f['tokens_per_s']:,.0f} | {f['peak_gib']:.3f} | "
                        f"{100 * f['mfu']:.1f}% | {speed} | {mem} | {diff} |")
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
