"""Errors that speak to the user.

A `UserError` means the input was wrong (a config, a file, a row, a checkpoint), not tunelib.
The `tune` command prints its message as one line on stderr, with no traceback, and exits
with code 2. Messages name the key, the row, the file or the shapes, and say how to fix it.
"""

import json
import os
import sys
import time


class UserError(Exception):
    """Bad input from the user. `tune` prints the message on one line and exits with 2."""

    exit_code = 2


class ConfigError(UserError):
    """A config, an override or a `_component_` that cannot be used."""


class DataError(UserError):
    """A dataset, a row or a tokenizer that cannot be used."""


class CheckpointError(UserError):
    """A checkpoint folder, file, key or shape that cannot be used."""


class TrainingStopped(UserError):
    """Training stopped on purpose (a non-finite loss, a dead peer); the message says why and what is kept."""

    exit_code = 1


class NothingToDo(UserError):
    """What was asked is already done (a finished run resumed with nothing left to train).
    `tune` prints the message as one line on stdout and exits with 0."""

    exit_code = 0


def tell(error: UserError) -> int:
    """Print `error` as `tune` reports it, on one line, and return its exit code.

    A NothingToDo goes to stdout as it is (under torchrun from rank 0 only: every rank finds
    the same); any other UserError to stderr as `tune: error: ...`, or, in a rank that
    torchrun started, to torchrun's error file (see `tunelib.cli.run`).
    """
    if isinstance(error, NothingToDo):
        if int(os.environ.get("RANK", 0)) == 0:
            print(error, flush=True)
    elif not _told_to_torchrun(error):
        print(f"{program()}: error: {as_typed(str(error))}", file=sys.stderr)
    return error.exit_code


def program() -> str:
    """The command's name as the user typed it: `tunelib` when run as the `tunelib` console
    script, else `tune`. Both run the same CLI; `tunelib` exists because torchtune installs a
    `tune` too (see `tunelib.cli.coexist`), and its messages should name the command that works."""
    typed = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "tunelib" if typed.split(".")[0] == "tunelib" else "tune"


def as_typed(message: str) -> str:
    """`message` with the commands it quotes (`tune ls`) named as the user typed this one:
    run as `tunelib`, the `tune` on the PATH may be torchtune's, so `tune ls` would mislead."""
    name = program()
    return message if name == "tune" else message.replace("`tune ", f"`{name} ")


def _told_to_torchrun(error: UserError) -> bool:
    """Under torchrun, leave the message in the error file torchrun gave this rank, so that the
    `tune` that started torchrun prints it once, not once per rank. False when not under torchrun."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path or int(os.environ.get("WORLD_SIZE", 1)) < 2:
        return False
    try:
        with open(path, "w") as f:
            json.dump({"message": str(error), "timestamp": int(time.time())}, f)
    except OSError:
        return False
    return True
