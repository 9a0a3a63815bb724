"""benchmarks/dpo.py --quick: tunelib's LoRA DPO step and TRL's DPOTrainer + PEFT both run on the
same tiny folder and pairs, see the same token ids, and start at the DPO loss ln 2. No timing is
asserted: speed and memory are what the benchmark reports."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
def test_dpo_benchmark_runs_in_its_quick_form(tmp_path):
    pytest.importorskip("trl")
    pytest.importorskip("peft")
    proc = subprocess.run([sys.executable, str(BENCH / "dpo.py"), "--quick", "--work", str(tmp_path / "work"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads((tmp_path / "out/runs.json").read_text())["runs"]
    assert [r["library"] for r in runs] == ["tunelib", "trl"]
    tunelib, trl = runs
    # The policy is the reference before the first update (adapters start at zero): every margin
    # is 0 and the loss is -log sigmoid(0) = ln 2 on both sides.
    assert abs(tunelib["losses"][0] - math.log(2)) < 1e-4
    assert abs(trl["losses"][0] - math.log(2)) < 1e-4
    assert tunelib["ids_sha"] == trl["ids_sha"]  # the same token ids and trained positions
    assert all(r["step_s"] > 0 and r["step_cpu_s"] > 0 and r["peak_gib"] > 0 and len(r["losses"]) == 3 for r in runs)
    text = (tmp_path / "out/table.md").read_text()
    assert "| step time (s, median) |" in text and "| first-step DPO loss |" in text
