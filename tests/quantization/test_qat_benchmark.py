"""benchmarks/qat.py runs end to end (its --quick size) and writes the table the docs quote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "qat.py"


@pytest.mark.slow
def test_the_qat_benchmark_writes_its_loss_table(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (tmp_path / "table.md").read_text()
    assert "| 8da4w |" in table and "| int4 weight-only (simulated) |" in table
    (run,) = json.loads((tmp_path / "runs.json").read_text())["runs"]
    rows = run["8da4w"]
    assert set(rows) == {"plain fp", "plain + PTQ", "QAT fp", "QAT + PTQ"}
    assert rows["plain + PTQ"] != rows["plain fp"]  # the quantized model really is another model
    assert all(run[q]["plain fp"] == rows["plain fp"] for q in run if isinstance(run[q], dict))
