"""The `tunelib` command beside `tune`, and what it says when the `tune` on the PATH is torchtune's.

torchtune's package installs a `tune` too: installing it after tunelib replaces tunelib's, and
uninstalling it deletes it. These tests run the installed console scripts (`pip install -e .`
writes them) with a PATH made for each case: a fake torchtune `tune` first, tunelib's own, none.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunelib.cli.coexist import script_package

BIN = Path(sys.executable).parent

# What pip writes for torchtune's `tune = torchtune._cli.tune:main`; the interpreter's path may
# well hold "tunelib" (a venv made for it), which must not make the script look like ours.
TORCHTUNE_SCRIPT = """#!/home/me/tunelib-venv/bin/python
# -*- coding: utf-8 -*-
import re
import sys
from torchtune._cli.tune import main
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit(main())
"""


def command(name: str, *args: str, path: str | None = None) -> subprocess.CompletedProcess:
    """Run the installed console script `name` with `args`, and PATH set to `path` if given."""
    script = BIN / name
    assert script.is_file(), f"{script} is missing: `pip install -e .` writes tunelib's console scripts"
    env = dict(os.environ)
    if path is not None:
        env["PATH"] = path
    return subprocess.run([str(script), *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture
def torchtune_first(tmp_path) -> str:
    """A PATH on which `tune` is a torchtune console script, ahead of tunelib's."""
    folder = tmp_path / "torchtune-bin"
    folder.mkdir()
    (folder / "tune").write_text(TORCHTUNE_SCRIPT)
    (folder / "tune").chmod(0o755)
    return os.pathsep.join([str(folder), str(BIN), os.environ.get("PATH", "")])


def test_tunelib_runs_the_same_cli_under_its_own_name(tmp_path):
    help_text = command("tunelib", "--help").stdout
    assert help_text.startswith("usage: tunelib ") and "download" in help_text and "merge_lora" in help_text
    assert command("tunelib", "ls", "--help").stdout.startswith("usage: tunelib ls")
    assert command("tunelib", "validate", "--help").stdout.startswith("usage: tunelib validate CONFIG")
    assert command("tune", "--help").stdout.startswith("usage: tune ")


def test_tunelib_errors_name_tunelib_and_its_commands(tmp_path):
    done = command("tunelib", "cp", "no_such_config", str(tmp_path / "x.yaml"))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("tunelib: error: no recipe or config")
    assert "`tunelib ls` lists them" in done.stderr  # not `tune ls`, which may be torchtune's
    assert command("tune", "cp", "no_such_config", str(tmp_path / "x.yaml")).stderr.startswith("tune: error: ")


def test_version_says_when_tune_on_path_is_torchtune(torchtune_first, tmp_path):
    done = command("tunelib", "--version", path=torchtune_first)
    version, note = done.stdout.splitlines()
    assert done.returncode == 0 and version.startswith("tunelib 0.")
    assert note.startswith(f"note: the `tune` on your PATH ({tmp_path / 'torchtune-bin' / 'tune'}) is torchtune's")
    assert "use `tunelib` in its place" in note and "pip install --force-reinstall --no-deps" in note
    # The first thing a user of `tunelib` reads says it too.
    assert note in command("tunelib", "--help", path=torchtune_first).stdout


def test_no_note_when_tune_on_path_is_tunelib(tmp_path):
    path = os.pathsep.join([str(BIN), os.environ.get("PATH", "")])
    for name in ("tune", "tunelib"):
        out = command(name, "--version", path=path).stdout
        assert out.startswith("tunelib 0.") and "note:" not in out
    assert "note:" not in command("tunelib", "--help", path=path).stdout


def test_version_says_when_no_tune_is_on_path(tmp_path):
    out = command("tunelib", "--version", path=str(tmp_path)).stdout
    assert "note: no `tune` command is on your PATH (uninstalling torchtune deletes" in out
    assert "pip install --force-reinstall --no-deps" in out


@pytest.mark.parametrize("text, owner", [
    (TORCHTUNE_SCRIPT, "torchtune"),
    ("#!/usr/bin/python\nimport re\nimport sys\nfrom tunelib.cli.main import main\n", "tunelib"),
    # Scripts written by old setuptools name the distribution instead.
    ("#!/usr/bin/python\n__requires__ = 'torchtune==0.2.1'\nfrom pkg_resources import load_entry_point\n"
     "sys.exit(load_entry_point('torchtune==0.2.1', 'console_scripts', 'tune')())\n", "torchtune"),
    ("\x7fELF\x00\x01binary", None),
])
def test_script_owner_is_read_from_its_entry_point(tmp_path, text, owner):
    (tmp_path / "tune").write_text(text)
    assert script_package(tmp_path / "tune") == owner


def test_a_run_started_as_tunelib_prints_next_commands_as_tunelib(tmp_path):
    from support.recipes import tiny_model_folder, words

    folder = tiny_model_folder(tmp_path, "llama3_2")
    done = command("tunelib", "run", "lora_finetune_single_device", "--config", "llama3_2/1B_lora_tunelib",
                   *words(folder, tmp_path / "out", None, ("max_steps_per_epoch=1",)))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "  tunelib chat " in done.stdout and "  tunelib run generate --config generation" in done.stdout
    assert "  tune chat " not in done.stdout
