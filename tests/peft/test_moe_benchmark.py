"""benchmarks/moe.py --quick: both workers run one MoE LoRA step on the same tiny folder and agree
on its loss. No timing is asserted: speed and memory are what the benchmark reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.slow
def test_moe_benchmark_runs_in_its_quick_form(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / "moe.py"), "--quick", "--work", str(tmp_path / "work"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads((tmp_path / "out/runs.json").read_text())["runs"]
    assert [r["library"] for r in runs] == ["tunelib", "transformers"]
    tunelib, transformers = runs
    # Same weights, same batch, adapters starting at zero: the same first loss (aux loss included).
    assert abs(tunelib["losses"][0] - transformers["losses"][0]) < 1e-4
    assert all(r["step_s"] > 0 and r["peak_gib"] > 0 and len(r["losses"]) == 3 for r in runs)
    assert "| step time (s, median) |" in (tmp_path / "out/table.md").read_text()
