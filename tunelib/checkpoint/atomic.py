"""Checkpoint folders that are either complete or absent: no save can destroy the previous one.

A checkpoint is written into a hidden temporary folder beside its final name; a completion
marker is written last, everything is flushed to disk, and only then is the folder renamed
into place. A crash or a kill at any moment leaves either the old state or the new one,
plus at worst a `.step_N.tmp` folder that resume ignores (and says so) and the next save
of that step replaces.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tunelib import __version__

MARKER = "tunelib_complete.json"
_STEP = re.compile(r"^step_(\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint folder and what its marker says."""

    path: Path
    step: int
    final: bool


@contextmanager
def atomic_folder(final: Path, *, step: int, is_final: bool, dist=None) -> Iterator[Path]:
    """Yield an empty temporary folder; on normal exit it becomes `final`, complete.

    If the body raises (on any rank), the temporary folder is removed and `final` is
    untouched. With `dist` (a `tunelib.training.distributed.Dist`), every rank writes its part
    into the same folder and rank 0 alone marks and renames it, after all ranks are done.
    """
    final = Path(final)
    main = dist is None or dist.is_main
    tmp = final.parent / f".{final.name}.tmp"
    if main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    _barrier(dist)
    failure: BaseException | None = None
    try:
        yield tmp
    except BaseException as e:  # noqa: BLE001 - re-raised below, after the peers hear of it
        failure = e
    if _any_failed(dist, failure):
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        if failure is not None:
            raise failure
        raise OSError(f"another rank could not write its part of {final}")
    if main:
        try:
            _write_marker(tmp, step, is_final)
            _sync_tree(tmp)
            _swap_into_place(tmp, final)
        except BaseException:
            # A full disk at the marker or the fsync: the unmarked copy must not keep the space.
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    _barrier(dist)


@contextmanager
def output_folder(out: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `out` that becomes `out` on normal exit (removed on error).

    For one-off outputs (a merged or quantized model): complete or absent, no marker. `out`
    must not exist or be an empty folder; the caller checks that first.
    """
    out = Path(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        yield tmp
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _barrier(dist) -> None:
    if dist is not None:
        dist.barrier()


def _any_failed(dist, failure: BaseException | None) -> bool:
    if dist is None or not dist.enabled:
        return failure is not None
    return dist.max(1.0 if failure is not None else 0.0) > 0


def _write_marker(folder: Path, step: int, is_final: bool) -> None:
    info = {"step": step, "final": is_final, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "tunelib": __version__}
    (folder / MARKER).write_text(json.dumps(info) + "\n")


def _sync_tree(folder: Path) -> None:
    """fsync every file and folder, so a power cut after the rename cannot leave holes."""
    for root, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_into_place(tmp: Path, final: Path) -> None:
    if final.exists():
        # Re-saving a step (after a resume): move the old one aside first, so a crash between
        # the two renames still leaves one complete copy.
        old = final.parent / f".{final.name}.old"
        if old.exists():
            shutil.rmtree(old)
        os.rename(final, old)
        try:
            os.rename(tmp, final)
        except OSError:
            os.rename(old, final)  # the caller removes tmp; the previous copy stays where it was
            raise
        shutil.rmtree(old)
    else:
        os.rename(tmp, final)
    _fsync_dir(final.parent)


def read_marker(folder: Path) -> Checkpoint | None:
    """The checkpoint in `folder`, or None when it has no readable completion marker."""
    try:
        info = json.loads((Path(folder) / MARKER).read_text())
        return Checkpoint(Path(folder), int(info["step"]), bool(info.get("final", False)))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def complete_checkpoints(output_dir: Path) -> list[Checkpoint]:
    """Complete checkpoints in `output_dir`, oldest first (the final one last among equals)."""
    found = []
    for folder in Path(output_dir).iterdir() if Path(output_dir).is_dir() else []:
        if folder.is_dir() and (_STEP.match(folder.name) or folder.name == "final"):
            marker = read_marker(folder)
            if marker is not None:
                found.append(marker)
    return sorted(found, key=lambda c: (c.step, c.final))


def incomplete_checkpoints(output_dir: Path) -> list[Path]:
    """Folders of interrupted saves (`.step_N.tmp`) and step folders without a marker."""
    out = []
    for folder in Path(output_dir).iterdir() if Path(output_dir).is_dir() else []:
        if not folder.is_dir():
            continue
        interrupted = folder.name.startswith(".") and folder.name.endswith(".tmp")
        unmarked = (_STEP.match(folder.name) or folder.name == "final") and read_marker(folder) is None
        if interrupted or unmarked:
            out.append(folder)
    return sorted(out)


def prune(output_dir: Path, keep_last_n: int | None) -> list[Path]:
    """Delete all but the newest `keep_last_n` complete step checkpoints; return what was deleted.

    Only `step_N` folders that carry tunelib's completion marker are candidates, the newest
    complete one is always kept, and `final` is never deleted.
    """
    if not keep_last_n or keep_last_n < 1:
        return []
    steps = [c for c in complete_checkpoints(output_dir) if not c.final and _STEP.match(c.path.name)]
    doomed = steps[:-keep_last_n]
    for checkpoint in doomed:
        shutil.rmtree(checkpoint.path)
    return [c.path for c in doomed]
