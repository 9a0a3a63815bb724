"""`tune compare RUN_DIR_OR_SWEEP_DIR...`: runs side by side.

    tune compare /tmp/rank-lr                                   # a sweep's points
    tune compare /tmp/rank-lr --sort val_loss --plot curves.png --html report.html
    tune compare out/lora out/full ~/torchtune-run ~/hf-run/trainer_state.json --json

A table with one row per run: the config keys whose values differ between the runs, then
method, trainable parameters, steps, trained tokens, wall time, tokens/s, peak memory,
first/last/min training loss, last validation loss, and lm-eval scores (eval.TASK.METRIC)
when `tune run eleuther_eval ... output_path=RUN/eval.json` was run on it. Besides tunelib
runs and sweeps it reads a torchtune run (its DiskLogger log_*.txt) and an HF Trainer run
(trainer_state.json). Plots need matplotlib (pip install 'tunelib[plots]').
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tunelib.experiments import report
from tunelib.experiments.runs import find_runs


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="compare runs: table, loss curves, HTML report, JSON",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="RUN_DIR_OR_SWEEP_DIR",
                   help="run folders, sweep folders, folders of runs, trainer_state.json or log_*.txt files")
    p.add_argument("--sort", metavar="COLUMN", help="sort by a column, e.g. val_loss; --sort=-COLUMN for largest first")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON (rows, configs, curves)")
    p.add_argument("--plot", metavar="FILE.png", help="draw the training and validation loss curves to a PNG")
    p.add_argument("--html", metavar="FILE.html", help="write a report page with the whole table and the plot")
    p.add_argument("--x", choices=("steps", "tokens"), default="steps", help="the plots' x axis (default: steps)")
    p.set_defaults(func=run)


def run(args) -> int:
    """Print the table (or JSON) of the runs under args.paths and write the plot and page asked for; returns 0.

    Raises:
        UserError: a path with no runs, a wrong --sort column, matplotlib missing for a plot, an unwritable file.
    """
    runs = find_runs(args.paths)
    columns, table = report.rows(runs)
    if args.sort:
        table = report.sort_rows(columns, table, args.sort)
    png = report.plot(runs, args.x) if args.plot or args.html else None
    written = []
    if args.plot:
        written.append(report.write(Path(args.plot).expanduser(), png))
    if args.html:
        page = report.html_report(columns, table, png, f"tune compare: {len(runs)} runs")
        written.append(report.write(Path(args.html).expanduser(), page))
    if args.json:
        print(report.as_json(runs, columns, table))
        return 0
    print(report.text_table(columns, table))
    for path in written:
        print(f"Wrote {path}")
    return 0
