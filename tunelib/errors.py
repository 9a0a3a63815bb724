"""Errors that speak to the user.

A `UserError` means the input was wrong (a config, a file, a row, a checkpoint), not tunelib.
The `tune` command prints its message as one line on stderr, with no traceback, and exits
with code 2. Messages name the key, the row, the file or the shapes, and say how to fix it.
"""

import os
import sys


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
    the same); any other UserError to stderr as `tune: error: ...`.
    """
    if isinstance(error, NothingToDo):
        if int(os.environ.get("RANK", 0)) == 0:
            print(error, flush=True)
    else:
        print(f"tune: error: {error}", file=sys.stderr)
    return error.exit_code
