"""One writer per output_dir: a lock file that a second run finds and a killed run leaves free.

A training run holds `output_dir/.tunelib.lock` from setup to its end. The file says who holds
it (pid, host, start time, command); what holds it is an `fcntl.flock` on the open file, which
the kernel drops when the owner exits, however it exits (kill -9 included). A lock file whose
flock is free is therefore stale, and the next run takes it over. Under torchrun only global
rank 0 takes the lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path

from tunelib.errors import ConfigError

LOCK_NAME = ".tunelib.lock"


class OutputDirLock:
    """A held lock on an output_dir; `release()` gives it back and removes the file."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    @classmethod
    def take(cls, output_dir: Path) -> "OutputDirLock":
        """Lock `output_dir` (which must exist) for this process, taking over a stale lock.

        Raises:
            ConfigError: another live process holds it (the message names its pid, host and
                start time), or the folder is not writable.
        """
        path = Path(output_dir) / LOCK_NAME
        while True:
            fd = _open(path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read(fd)
                os.close(fd)
                raise ConfigError(_busy_message(Path(output_dir), owner)) from None
            except OSError as e:  # a file system without locks (some network mounts): run unguarded
                print(f"Warning: cannot lock {output_dir} ({e.strerror or e}); make sure no other run writes "
                      "into it", file=sys.stderr, flush=True)
                break
            if _still_named(fd, path):
                stale = _read(fd)
                if stale:
                    print(f"Taking over the lock of {output_dir} left by {_who(stale)}: that run ended without "
                          "releasing it", flush=True)
                break
            os.close(fd)  # its owner removed it between our open and our flock: lock the new one
        _write_owner(fd)
        return cls(path, fd)

    def release(self) -> None:
        """Remove the lock file and drop the lock (again: nothing)."""
        if self._fd is None:
            return
        # Unlinked before it is unlocked: a run that opened the old file sees it is gone and retries.
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


def check_free(output_dir: Path) -> None:
    """Refuse early when a live run holds `output_dir` (nothing is created or taken).

    Raises:
        ConfigError: another process holds the lock.
    """
    path = Path(output_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # no lock file (or none readable): the run's own `take` decides
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigError(_busy_message(Path(output_dir), _read(fd))) from None
    except OSError:
        pass  # no locks on this file system: `take` warns about it
    finally:
        os.close(fd)


def _busy_message(output_dir: Path, owner: dict) -> str:
    """The one line that refuses a second writer of `output_dir` held by `owner` (its lock file's content)."""
    command = owner.get("command", "")
    command = f", `{command[:120]}{'...' if len(command) > 120 else ''}`" if command else ""
    return (f"output_dir {output_dir} is in use by another run ({_who(owner)}{command}); wait for it to "
            "end or stop it, then rerun (with resume_from_checkpoint=True to continue it), or choose another "
            "output_dir")


def _who(owner: dict) -> str:
    if not owner:
        return "a process that has not yet said who it is"
    return (f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}, "
            f"started {owner.get('started', 'at an unknown time')}")


def _open(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ConfigError(f"output_dir {path.parent} is not writable: {e.strerror or e}") from None


def _still_named(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _read(fd: int) -> dict:
    try:
        owner = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "{}")
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _write_owner(fd: int) -> None:
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
             "command": shlex.join(sys.argv).replace("\n", " ")}
    data = (json.dumps(owner) + "\n").encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    except OSError:
        pass  # the flock is the lock; who holds it is a courtesy a full disk may refuse
