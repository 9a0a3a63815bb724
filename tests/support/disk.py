"""A real small disk for the full-disk tests: a tmpfs mounted for one test, and a checkpointer
that fills it after one save so that the next save meets ENOSPC in the real writers.

    with small_disk(tmp_path / "disk") as disk:        # skips the test where it cannot mount
        ...  output_dir=disk / "out", checkpointer=support.disk.FillingCheckpointer ...
"""

from __future__ import annotations

import errno
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from tunelib.training import HFCheckpointer
from tunelib.training import LinearCrossEntropyLoss

PAGE = 4096  # tmpfs counts the space of each file in whole pages
MARKER = "tunelib_complete.json"


@contextmanager
def small_disk(mount_point: Path, size: str = "30m") -> Iterator[Path]:
    """Mount a tmpfs of `size` at `mount_point` for the body; skip the test where that is not possible."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; this test fills a real disk")
    mount_point.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or mounted.returncode})")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def fill(ballast: Path, leave_pages: int = 0) -> None:
    """Grow `ballast` until its file system has only `leave_pages` pages free."""
    with open(ballast, "ab", buffering=0) as f:
        while (free := _free_pages(ballast.parent)) > leave_pages:
            try:
                f.write(b"\0" * (PAGE * min(free - leave_pages, 256)))
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                break


def _free_pages(folder: Path) -> int:
    stat = os.statvfs(folder)
    return stat.f_bavail * stat.f_frsize // PAGE


def pages(path: Path) -> int:
    return -(-path.stat().st_size // PAGE)


class FillingCheckpointer(HFCheckpointer):
    """Saves as usual; after the save of `fill_after_step`, fills the disk with `ballast` so that the
    next save of the same shape fails while writing `fail_at`: "first" (its first file, the weights),
    a file name of the checkpoint (e.g. "training_state.pt"), or the completion marker.
    """

    def __init__(self, checkpoint_dir: str, output_dir: str, fill_after_step: int, ballast: str,
                 fail_at: str = "first"):
        super().__init__(checkpoint_dir, output_dir)
        self.fill_after_step, self.ballast, self.fail_at = fill_after_step, Path(ballast), fail_at

    def save(self, model, *, step, **kwargs):
        folder = super().save(model, step=step, **kwargs)
        if step == self.fill_after_step:
            fill(self.ballast, self._room_for(folder))
        return folder

    def _room_for(self, folder: Path) -> int:
        """Pages that the files written before `fail_at` need (the marker is written last)."""
        if self.fail_at == "first":
            return 0
        files = [p for p in folder.rglob("*") if p.is_file()]
        later = {MARKER} | ({self.fail_at} if self.fail_at != MARKER else set())
        return sum(pages(p) for p in files if p.name not in later)


class FillingLoss(LinearCrossEntropyLoss):
    """The usual loss; building it fills the disk of `ballast` (after output_dir was checked, before
    the run writes config.yaml and its first metrics)."""

    def __init__(self, ballast: str, num_output_chunks: int = 8):
        super().__init__(num_output_chunks)
        fill(Path(ballast))
