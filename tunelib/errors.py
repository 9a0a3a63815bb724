"""Errors that speak to the user.

A `UserError` means the input was wrong (a config, a file, a row, a checkpoint), not tunelib.
The `tune` command prints its message as one line on stderr, with no traceback, and exits
with code 2. Messages name the key, the row, the file or the shapes, and say how to fix it.
"""


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
