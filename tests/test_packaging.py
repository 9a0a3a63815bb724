"""The wheel ships recipes and configs inside `tunelib`, and claims no global `recipes` module."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_holds_recipes_inside_tunelib(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(REPO)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("tunelib-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "tunelib/recipes/__init__.py" in names
    assert not any(n.startswith("recipes/") for n in names)
    shipped = sorted(p.relative_to(REPO / "recipes").as_posix() for p in (REPO / "recipes").rglob("*")
                     if p.is_file() and p.suffix in (".py", ".yaml") and "__pycache__" not in p.parts)
    assert all(f"tunelib/recipes/{rel}" in names for rel in shipped)
    entry = [n for n in names if n.endswith("entry_points.txt")]
    assert entry and "tune = tunelib.cli.main:main" in zipfile.ZipFile(wheel).read(entry[0]).decode()
