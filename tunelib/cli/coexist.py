"""Living beside torchtune: whose `tune` the PATH runs, and how to get tunelib's back.

torchtune's package installs a console script called `tune` too, so installing torchtune
after tunelib replaces tunelib's `tune`, and uninstalling torchtune deletes it. tunelib also
installs the same command as `tunelib`, which nothing else claims; `tunelib --version` (and
`tune --version`) looks at the `tune` the shell would run and says in one line when it is
not tunelib's. Nothing here imports torch.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import tunelib

# How a console script names its entry point: `load_entry_point('torchtune==0.2.1', ...)` (old
# setuptools scripts, which also import pkg_resources), else `from tunelib.cli.main import main`
# (pip, uv).
_LOAD_ENTRY_POINT = re.compile(rb"load_entry_point\(\s*['\"]([\w.-]+)")
_FROM_IMPORT = re.compile(rb"^\s*from\s+([A-Za-z_][\w.]*)\s+import\s", re.MULTILINE)
_NOT_AN_OWNER = ("__future__", "pkg_resources", "importlib")
_READ_AT_MOST = 64 * 1024  # a script is a few hundred bytes; a binary (a Windows launcher) yields no owner


def script_package(path: str | Path) -> str | None:
    """The top-level package whose entry point the console script at `path` runs
    ("tunelib", "torchtune"), or None when the file cannot be read or names none."""
    try:
        with open(path, "rb") as f:
            text = f.read(_READ_AT_MOST)
    except OSError:
        return None
    named = _LOAD_ENTRY_POINT.search(text)
    modules = [named.group(1)] if named else _FROM_IMPORT.findall(text)
    for module in modules:
        package = module.decode("ascii", "replace").split(".")[0].replace("-", "_")
        if package not in _NOT_AN_OWNER:
            return package
    return None


def tune_on_path_note() -> str | None:
    """One line saying that the `tune` the shell runs is not tunelib's, and what to do; None
    when it is tunelib's, or when it is a script whose owner cannot be told."""
    found = shutil.which("tune")
    if found is None:
        return ("no `tune` command is on your PATH (uninstalling torchtune deletes the one tunelib "
                f"installed, since both packages install a `tune`): use `tunelib`, or run `{reinstall_command()}` "
                "to put it back")
    owner = script_package(found)
    if owner in (None, "tunelib"):
        return None
    whose = "torchtune's" if owner == "torchtune" else f"the {owner} package's"
    return (f"the `tune` on your PATH ({found}) is {whose}, not tunelib's (both packages install a `tune`; "
            f"the one installed last wins): use `tunelib` in its place, or run `{reinstall_command()}` "
            "to make `tune` tunelib's again")


def reinstall_command() -> str:
    """The pip command that writes tunelib's console scripts again, for this installation:
    editable from its source folder when tunelib runs from one, else from the package index."""
    source = Path(tunelib.__file__).resolve().parents[1]
    if (source / "pyproject.toml").is_file() and (source / "tunelib" / "cli").is_dir():
        return f"pip install --force-reinstall --no-deps -e {shlex.quote(str(source))}"
    return "pip install --force-reinstall --no-deps tunelib"


def version_text() -> str:
    """What `tune --version` prints: the version, then the note about `tune` when there is one."""
    lines = [f"tunelib {tunelib.__version__} ({Path(tunelib.__file__).resolve().parent})"]
    note = tune_on_path_note()
    if note:
        lines.append(f"note: {note}")
    return "\n".join(lines)
