"""The commands of docs/experiments.md are accepted as written: its `tune cat` makes the study's
config, and every point of every `tune sweep` passes the checks `tune run` makes (--dry-run)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "experiments.md"


def _commands(verb: str) -> list[list[str]]:
    text = DOC.read_text().replace("\\\n", " ")
    return [shlex.split(line.split("#")[0])[1:] for line in re.findall(rf"^tune {verb} .*$", text, re.MULTILINE)]


def test_the_study_config_and_every_sweep_of_the_tutorial_are_accepted(tune, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (cat,) = _commands("cat")
    code, out, err = tune("cat", *cat[1:-2])  # the words before `> study.yaml`
    assert code == 0, err
    (tmp_path / "study.yaml").write_text(out)
    sweeps = _commands("sweep")
    assert len(sweeps) == 6  # rank and alpha, optimizer and schedule, SGD's lr, epochs, layers, seeds
    for words in sweeps:
        code, out, err = tune("sweep", *words[1:], "--dry-run")
        assert code == 0, f"{words}: {err}"
        assert "point(s), each checked" in out
