"""Fixtures shared by every test folder."""

from __future__ import annotations

import pytest


@pytest.fixture
def tune(capsys):
    """Run the `tune` command in this process: tune(*words) -> (exit code, stdout, stderr)."""
    from tunelib.cli.main import main

    def run(*words: str):
        try:
            code = main(list(words))
        except SystemExit as e:  # argparse exits for --help and usage errors
            code = e.code if isinstance(e.code, int) else 2
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def allow_support(monkeypatch):
    """Let configs name components in tests/support (the documented opt-in)."""
    monkeypatch.setenv("TUNELIB_ALLOW_MODULES", "support")


@pytest.fixture
def fake_recipes(tmp_path, monkeypatch, allow_support):
    """A recipes folder with one test recipe and its configs, in place of the shipped one."""
    from support.components import write_recipes
    from tunelib import registry

    root = write_recipes(tmp_path / "recipes", tmp_path / "out")
    monkeypatch.setattr(registry, "recipes_dir", lambda: root)
    return root


@pytest.fixture(scope="session")
def hf_folder(tmp_path_factory):
    """hf_folder(family) -> a saved tiny transformers model of that family (read-only: do not write into it)."""
    from support.models import make_hf_model_folder

    made = {}

    def get(family: str):
        if family not in made:
            made[family] = make_hf_model_folder(tmp_path_factory.mktemp(family), family)
        return made[family]

    return get
