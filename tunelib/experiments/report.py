"""The comparison of runs: a table (text, JSON or HTML) and their loss curves drawn with matplotlib."""

from __future__ import annotations

import base64
import difflib
import html
import io
import json
from pathlib import Path
from typing import Any

from tunelib.errors import UserError
from tunelib.experiments.runs import Run

# Columns every comparison has, after the config keys that differ: (key, heading).
METRICS = [
    ("method", "method"), ("trainable_params", "trainable"), ("steps", "steps"), ("tokens", "tokens"),
    ("seconds", "time_s"), ("tokens_per_second", "tokens/s"), ("peak_memory_gib", "peak_GiB"),
    ("first_loss", "first_loss"), ("last_loss", "last_loss"), ("min_loss", "min_loss"), ("val_loss", "val_loss"),
]
# Keys that differ between any two runs without saying how they differ.
_NOT_SETTINGS = ("output_dir", "resume_from_checkpoint")
MAX_CONFIG_COLUMNS = 8  # more would not fit a terminal; --json has them all


def differing_keys(runs: list[Run]) -> list[str]:
    """The config keys whose values differ between the runs (where a run's folder is in a value, it is no difference)."""
    keys = list(dict.fromkeys(key for run in runs for key in run.config))  # in the configs' own order
    out = []
    for key in keys:
        if key in _NOT_SETTINGS:
            continue
        values = {json.dumps(run.config.get(key), sort_keys=True, default=str) for run in runs
                  if run.config and (key in run.config or not run.partial_config)}
        if len(values) > 1 and not any(str(run.path.resolve()) in str(run.config.get(key, "")) for run in runs):
            out.append(key)
    return out


def rows(runs: list[Run]) -> tuple[list[str], list[dict[str, Any]]]:
    """The table: its column keys and one dict per run (name, status when any run has one, the
    differing config keys, the metrics, the eval scores)."""
    config_keys = differing_keys(runs)
    eval_keys = sorted({key for run in runs for key in run.evals})
    status = ["status"] if any(run.status not in (None, "done") for run in runs) else []
    columns = ["name", *status, *config_keys, *(key for key, _ in METRICS), *eval_keys]
    table = []
    for run in runs:
        row = {"name": run.name, "status": run.status, **{key: run.config.get(key) for key in config_keys}}
        row.update({key: getattr(run, key) for key, _ in METRICS})
        row.update({key: run.evals.get(key) for key in eval_keys})
        table.append(row)
    return columns, table


def sort_rows(columns: list[str], table: list[dict], key: str) -> list[dict]:
    """`table` sorted by column `key` (`-key`: largest first); runs without a value come last.

    Raises:
        UserError: no such column (with "did you mean").
    """
    descending, name = key.startswith("-"), key.lstrip("-")
    known = columns + [heading for _, heading in METRICS]
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"--sort {key}: no such column{hint}; columns: {', '.join(columns)}")
    name = dict((heading, k) for k, heading in METRICS).get(name, name)
    present = [row for row in table if row.get(name) is not None]
    missing = [row for row in table if row.get(name) is None]
    present.sort(key=lambda row: _sortable(row[name]), reverse=descending)
    return present + missing


def _sortable(value: Any):
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def text_table(columns: list[str], table: list[dict]) -> str:
    """An aligned plain-text table (numbers to the right, `-` for what a run does not have)."""
    shown = _shown_columns(columns)
    headings = [_heading(c) for c in shown]
    cells = [[fmt(row.get(c), c) for c in shown] for row in table]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headings)]
    numeric = [all(_is_number(row.get(c)) or row.get(c) is None for row in table) and c != "name" for c in shown]

    def line(values):
        return "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric)).rstrip()

    out = [line(headings), line(["-" * w for w in widths]), *(line(r) for r in cells)]
    hidden = len(columns) - len(shown)
    if hidden:
        out.append(f"(+{hidden} more differing config keys; --json or --html shows them)")
    return "\n".join(out)


def _shown_columns(columns: list[str]) -> list[str]:
    config = [c for c in columns if c not in ("name", "status") and c not in dict(METRICS) and not c.startswith("eval.")]
    return [c for c in columns if c not in config[MAX_CONFIG_COLUMNS:]]


def _heading(column: str) -> str:
    return dict(METRICS).get(column, column)


def fmt(value: Any, column: str = "") -> str:
    """A cell: losses to 4 decimals, counts with thousands separators, `-` for nothing."""
    if value is None:
        return "-"
    if column.endswith("._component_") and isinstance(value, str):
        return value.rsplit(".", 1)[-1]  # the class or function; --json keeps the whole path
    if isinstance(value, bool) or not _is_number(value):
        return ",".join(map(str, value)) if isinstance(value, list) else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if column == "tokens_per_second":
        return f"{value:,.0f}"
    if column in ("seconds", "peak_memory_gib"):
        return f"{value:.2f}" if column == "peak_memory_gib" else f"{value:.1f}"
    return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3g}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def as_json(runs: list[Run], columns: list[str], table: list[dict]) -> str:
    """The comparison for scripts: every run's row, path, source, whole config and curves."""
    by_name = {run.name: run for run in runs}
    out = []
    for row in table:
        run = by_name[row["name"]]
        out.append({**row, "path": str(run.path), "source": run.source, "config": run.config,
                    "train": [list(p) for p in run.train], "val": [list(p) for p in run.val]})
    return json.dumps({"columns": columns, "runs": out}, indent=2, default=str)


def plot(runs: list[Run], x: str = "steps") -> bytes:
    """Training (solid) and validation (dashed) loss of each run against steps or tokens, as a PNG.

    Raises:
        UserError: matplotlib is not installed, or no run has a loss curve.
    """
    try:
        import matplotlib
    except ImportError:
        raise UserError("plots need matplotlib: pip install 'tunelib[plots]' (or pip install matplotlib)") from None
    matplotlib.use("Agg")  # files only: no window, no display needed
    from matplotlib import pyplot as plt

    curves = [run for run in runs if run.train or run.val]
    if not curves:
        raise UserError("no run has a loss curve to plot (metrics.jsonl, a DiskLogger log or trainer_state.json)")
    index = 1 if x == "tokens" else 0
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    for i, run in enumerate(curves):
        color = f"C{i % 10}"
        for points, style, label in ((run.train, "-", run.name), (run.val, "--", f"{run.name} (val)")):
            kept = [(p[index], p[2]) for p in points if p[index] is not None]
            if kept:
                ax.plot(*zip(*kept), style, color=color, label=label, linewidth=1.4)
    ax.set_xlabel("trained tokens" if x == "tokens" else "optimizer step")
    ax.set_ylabel("loss")
    ax.set_title("training loss (solid) and validation loss (dashed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def html_report(columns: list[str], table: list[dict], png: bytes | None, title: str) -> str:
    """One self-contained HTML page: the whole table (every differing key) and the plot inline."""
    head = "".join(f"<th>{html.escape(_heading(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(row.get(c), c))}</td>" for c in columns) + "</tr>\n"
                   for row in table)
    image = (f'<img alt="loss curves" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
             if png else "<p>(no plot: no run has a loss curve)</p>")
    style = ("body{font-family:sans-serif;margin:2em} table{border-collapse:collapse;font-size:13px} "
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right} td:first-child{text-align:left}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n<h1>{html.escape(title)}</h1>\n"
            f"<table><tr>{head}</tr>\n{body}</table>\n<h2>Loss curves</h2>\n{image}\n</body></html>\n")


def write(path: Path, data: bytes | str) -> Path:
    """Write a report file, its folder made if missing.

    Raises:
        UserError: the file cannot be written.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    return path
