"""Writes that fail in words: the OSError behind a writer's own error, and whole-file replaces.

On a full disk the writers tunelib uses do not raise an OSError: safetensors raises its
`SafetensorError` ("... No space left on device (os error 28)"), `torch.save` a RuntimeError
that has lost the cause ("unexpected pos 704 vs 598"), torch.distributed.checkpoint a
`CheckpointException` holding each rank's error. `write_failure` finds the OSError in
each, so a failed save can be told in one line; `torch_save` keeps the cause torch drops.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def write_failure(error: BaseException) -> OSError | None:
    """The OSError behind `error` when it is a failed write (full disk, permissions, lost mount), else None.

    Args:
        error: what a writer raised: an OSError, safetensors' SafetensorError, or
            torch.distributed.checkpoint's CheckpointException.
    """
    if isinstance(error, OSError):
        return error
    if type(error).__name__ == "SafetensorError":
        found = _OS_ERROR.search(str(error))
        if found:
            code = int(found.group(1))
            return OSError(code, os.strerror(code))
        return None
    for failure in getattr(error, "failures", {}).values():  # CheckpointException: rank -> (error, trace)
        cause = write_failure(failure[0] if isinstance(failure, tuple) else failure)
        if cause is not None:
            return cause
    return None


class _Sink:
    """A file that remembers the OSError of a write, for a caller whose writer hides it."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.file.flush()


def torch_save(obj: Any, path: Path) -> None:
    """`torch.save(obj, path)`.

    Raises:
        OSError: a write failed (ENOSPC, EIO, ...); torch itself reports only "unexpected pos".
    """
    with open(path, "wb") as f:
        sink = _Sink(f)
        try:
            torch.save(obj, sink)
        except RuntimeError:
            if sink.error is not None:
                raise sink.error from None
            raise


def replace_text(path: Path, text: str) -> None:
    """Write `text` to `path` whole: a failure (or a kill) leaves the old file as it was.

    Raises:
        OSError: the text cannot be written; no partial or temporary file is left.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

