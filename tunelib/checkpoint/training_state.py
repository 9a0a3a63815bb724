"""Everything but the weights that an exact resume needs, in one file per checkpoint.

`training_state.pt` holds the optimizer and schedule, every random state (Python, NumPy,
torch, CUDA), the position in the data, the counters, and the settings that must not change
across a resume. It is read back with `torch.load(weights_only=True)`: plain containers and
tensors only, never a pickle of arbitrary objects. Under torchrun each rank has its own file,
and the sharded optimizer state is a torch.distributed.checkpoint folder (`optimizer/`),
whose metadata is a pickle: resume only from checkpoints you made.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from tunelib.checkpoint.safe_load import load_weights_only
from tunelib.errors import CheckpointError, ConfigError

FILENAME = "training_state.pt"
# Settings whose change makes the saved data position or schedule meaningless.
MUST_MATCH = ("batch_size", "gradient_accumulation_steps", "world_size", "dataset")
# Settings that may change, with a warning: the run continues, but not as it would have.
MAY_CHANGE = ("epochs", "max_steps_per_epoch", "optimizer", "lr_scheduler", "clip_grad_norm", "seed")


def fingerprint(settings: Any, world_size: int) -> dict[str, Any]:
    """The settings a resume compares, as plain values."""
    from omegaconf import OmegaConf

    def plain(value):
        return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value

    out = {key: plain(getattr(settings, key)) for key in MUST_MATCH + MAY_CHANGE if key != "world_size"}
    out["world_size"] = world_size
    return out


def exists(folder: Path) -> bool:
    """Whether `folder` holds a training state (one process, or rank 0 of several)."""
    return (Path(folder) / FILENAME).is_file() or (Path(folder) / _rank_file(0)).is_file()


def _rank_file(rank: int) -> str:
    return f"training_state_rank{rank}.pt"


def save(folder: Path, *, counters: Any, model: Any, optimizer: Any, scheduler: Any, loader: Any, rng: dict,
         settings_fingerprint: dict, dist: Any) -> None:
    """Write the training state into `folder` (every rank calls it).

    One process writes `training_state.pt`. Under torchrun each rank writes its own
    `training_state_rank<r>.pt` (random state and data position), and the sharded optimizer
    state goes through torch.distributed.checkpoint into `optimizer/`.
    """
    state = {
        "counters": asdict(counters),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "loader": loader.state_dict(),
        "rng": rng,
        "settings": settings_fingerprint,
    }
    if not dist.enabled:
        torch.save({**state, "optimizer": optimizer.state_dict()}, Path(folder) / FILENAME)
        return
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    dcp.save({"optimizer": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=str(Path(folder) / "optimizer"))
    torch.save(state, Path(folder) / _rank_file(dist.rank))


def load(folder: Path, rank: int = 0, world_size: int = 1) -> dict[str, Any]:
    """Read this process's training state from a checkpoint (safe loading only).

    Raises:
        CheckpointError: the file is missing (e.g. saved with another number of processes)
            or cannot be read safely.
    """
    folder = Path(folder)
    path = folder / (FILENAME if world_size == 1 else _rank_file(rank))
    if not path.is_file():
        other = "one process" if (folder / _rank_file(0)).is_file() is False else "several processes"
        raise CheckpointError(f"{folder} has no {path.name}; it was saved by {other}, so resume it with the "
                              "same number of processes (or it is a final checkpoint, which has no training state)")
    return load_weights_only(path)


def restore_optimizer(folder: Path, saved: dict, model: Any, optimizer: Any, dist: Any) -> None:
    """Put the saved optimizer state back (from the file, or from `optimizer/` under torchrun)."""
    if "optimizer" in saved:
        optimizer.load_state_dict(saved["optimizer"])
        return
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    state = {"optimizer": get_optimizer_state_dict(model, optimizer)}
    dcp.load(state, checkpoint_id=str(Path(folder) / "optimizer"))
    set_optimizer_state_dict(model, optimizer, state["optimizer"])


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
            change = f"{key} changed ({saved[key]!r} -> {current.get(key)!r})"
            if key == "seed":
                note = "the checkpoint's seed and random state are kept"
            else:
                note = "the run continues, but will not match an uninterrupted one"
            if int(os.environ.get("RANK", 0)) == 0:
                print(f"Warning: resuming with {change}: {note}", file=sys.stderr, flush=True)
