"""Everything but the weights that an exact resume needs, in one file per checkpoint.

`training_state.pt` holds the optimizer and schedule, every random state (Python, NumPy,
torch, CUDA), the position in the data, the counters, and the settings that must not change
across a resume. It is read back with `torch.load(weights_only=True)`: plain containers and
tensors only, never a pickle of arbitrary objects.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from tunelib.errors import CheckpointError, ConfigError

FILENAME = "training_state.pt"
# Settings whose change makes the saved data position or schedule meaningless.
MUST_MATCH = ("batch_size", "gradient_accumulation_steps", "world_size", "dataset")
# Settings that may change, with a warning: the run continues, but not as it would have.
MAY_CHANGE = ("epochs", "max_steps_per_epoch", "optimizer", "lr_scheduler", "clip_grad_norm")


def fingerprint(settings: Any, world_size: int) -> dict[str, Any]:
    """The settings a resume compares, as plain values."""
    from omegaconf import OmegaConf

    def plain(value):
        return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value

    out = {key: plain(getattr(settings, key)) for key in MUST_MATCH + MAY_CHANGE if key != "world_size"}
    out["world_size"] = world_size
    return out


def save(folder: Path, *, counters: Any, optimizer: Any, scheduler: Any, loader: Any, rng: dict,
         settings_fingerprint: dict) -> None:
    """Write `training_state.pt` into `folder`."""
    state = {
        "counters": asdict(counters),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "loader": loader.state_dict(),
        "rng": rng,
        "settings": settings_fingerprint,
    }
    torch.save(state, Path(folder) / FILENAME)


def load(folder: Path) -> dict[str, Any]:
    """Read a checkpoint's training state (safe loading only).

    Raises:
        CheckpointError: the file is missing or cannot be read safely.
    """
    path = Path(folder) / FILENAME
    if not path.is_file():
        raise CheckpointError(f"{folder} has no {FILENAME}; it cannot be resumed from (a final checkpoint has none)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means an unsafe or broken file
        raise CheckpointError(f"cannot read {path} safely: {str(e).splitlines()[0]}") from None


def check_settings(saved: dict[str, Any], current: dict[str, Any], folder: Path) -> None:
    """Refuse a resume whose data position no longer applies; warn about other changes.

    Raises:
        ConfigError: batch size, accumulation, world size or dataset changed.
    """
    changed = [k for k in MUST_MATCH if k in saved and saved[k] != current.get(k)]
    if changed:
        what = ", ".join(f"{k} {saved[k]!r} -> {current.get(k)!r}" for k in changed)
        raise ConfigError(f"cannot resume from {folder}: {what} changed, so the saved position in the data "
                          "no longer applies; restore the old values or start a new output_dir")
    for key in MAY_CHANGE:
        if key in saved and saved[key] != current.get(key):
            warnings.warn(f"resuming with {key} changed ({saved[key]!r} -> {current.get(key)!r}); "
                          "the run will not match an uninterrupted one", stacklevel=2)
