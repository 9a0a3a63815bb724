"""torchtune's own config files, read from its released wheel (the repo keeps no copies).

`torchtune_release()` runs `python -m pip download --no-deps torchtune==0.6.1` once into
~/.cache/tunelib-tests (or $TUNELIB_TEST_CACHE) and unzips the wheel's `recipes/configs/*.yaml`
and `torchtune/_recipe_registry.py` beside it. torchtune is never imported: its files are
read as text and YAML. Tests skip, saying why, only when pip cannot reach PyPI.

Set TUNELIB_TORCHTUNE_MAIN to a checkout of torchtune's main branch to check its extra names too
(main was never released, so CI cannot download it).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

RELEASE = "0.6.1"


def cache_dir() -> Path:
    return Path(os.environ.get("TUNELIB_TEST_CACHE", Path.home() / ".cache/tunelib-tests"))


def torchtune_release(version: str = RELEASE) -> Path:
    """A folder holding torchtune `version`'s recipes/configs/ and torchtune/_recipe_registry.py."""
    folder = cache_dir() / f"torchtune-{version}"
    if (folder / "torchtune/_recipe_registry.py").is_file():
        return folder
    wheels = cache_dir() / "wheels"
    wheel = wheels / f"torchtune-{version}-py3-none-any.whl"
    if not wheel.is_file():
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--retries", "1",
                               f"torchtune=={version}", "-d", str(wheels)], capture_output=True, text=True)
        if proc.returncode != 0 or not wheel.is_file():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"pip could not download torchtune=={version} from PyPI: {last}")
    partial = folder.with_name(folder.name + ".partial")
    with zipfile.ZipFile(wheel) as zf:
        wanted = [n for n in zf.namelist()
                  if (n.startswith("recipes/configs/") and n.endswith(".yaml")) or n == "torchtune/_recipe_registry.py"]
        zf.extractall(partial, wanted)
    partial.replace(folder)  # whole or absent: a run stopped half-way unzips again
    return folder


def torchtune_main() -> Path | None:
    """A checkout of torchtune's main branch, when TUNELIB_TORCHTUNE_MAIN names one."""
    path = os.environ.get("TUNELIB_TORCHTUNE_MAIN")
    return Path(path) if path else None


def config_names(folder: Path) -> dict[str, tuple[str, Path]]:
    """torchtune's registered config names -> (its recipe, the YAML file), from _recipe_registry.py."""
    tree = ast.parse((folder / "torchtune/_recipe_registry.py").read_text())
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Recipe":
            kw = {k.arg: k.value for k in node.keywords}
            for config in kw["configs"].elts:
                ckw = {k.arg: ast.literal_eval(k.value) for k in config.keywords}
                file = folder / "recipes/configs" / ckw["file_path"]
                out.setdefault(ckw["name"], (ast.literal_eval(kw["name"]), file))
    return out
