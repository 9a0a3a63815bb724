"""Reading torch pickle files (.pt, .bin) without ever running code from them.

A pickle can name any Python callable, which unpickling then calls: a downloaded
`pytorch_model.bin` or a shared `training_state.pt` could run a command. torch's
weights-only unpickler accepts tensors and plain containers only and refuses the rest; this
module is the one place tunelib calls `torch.load`, so that refusal (and a damaged file)
reaches the user as one line instead of a traceback.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from tunelib.errors import CheckpointError


def load_weights_only(path: str | Path, *, mmap: bool = False) -> Any:
    """`torch.load(path, weights_only=True)` onto the CPU.

    `mmap` pages tensors in on use; files from torch < 1.6 are not zip archives, cannot be
    mapped, and are then read whole.

    Raises:
        CheckpointError: the file holds more than tensors and plain containers (it is refused
            and nothing in it runs), or it is damaged or not a torch file.
    """
    path = Path(path)
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's first line is generic advice to retry unsafely; the refused name is the useful part.
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found is None:  # random bytes fail the same unpickler without naming anything to call
            raise _damaged(path, "it is not a pickle of tensors") from None
        raise CheckpointError(f"refused to load {path}: it is a pickle that would run Python code "
                              f"({found.group(1)}); tunelib loads only tensors and plain values from .pt/.bin "
                              "files, so nothing in it was run; use safetensors weights, or a checkpoint "
                              "tunelib wrote") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise _damaged(path, _first_sentence(e)) from None


def _damaged(path: Path, reason: str) -> CheckpointError:
    return CheckpointError(f"cannot read {path}: {reason}; the file is damaged or not a torch file "
                           "(download or copy it again)")


def _first_sentence(error: BaseException) -> str:
    # torch appends paragraphs of advice to a damaged zip's message; the first sentence says what failed.
    text = str(error).strip()
    if not text:
        return type(error).__name__
    return text.splitlines()[0].split(". ")[0].rstrip(".")
