"""Everything but the weights that an exact resume needs, in one file per checkpoint.

`training_state.pt` holds the optimizer and schedule, every random state (Python, NumPy,
torch, CUDA), the position in the data, the counters, the settings that must not change
across a resume, and the run's fingerprint (what decides its numbers: model, adapters,
precision, tokenizer, data; see `tunelib.training.fingerprint`). The final checkpoint has one
too, so a finished run can be extended; it holds no weights (those are the folder's). It is
read back with `torch.load(weights_only=True)`: plain containers and tensors only, never a
pickle of arbitrary objects. Under torchrun each rank has its own file,
and the sharded optimizer state is a torch.distributed.checkpoint folder (`optimizer/`),
whose metadata is a pickle: resume only from checkpoints you made.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tunelib.checkpoint.safe_load import load_weights_only
from tunelib.checkpoint.writes import torch_save
from tunelib.errors import CheckpointError, ConfigError

FILENAME = "training_state.pt"
# Settings whose change makes the saved data position or schedule meaningless. The dataset node
# is compared whole only for checkpoints without a fingerprint, which compares it key by key
# and local files by content (so a moved file resumes, a rewritten one does not).
MUST_MATCH = ("batch_size", "gradient_accumulation_steps", "world_size", "dataset")
# Settings that may change, with a warning: the run continues, but not as it would have.
MAY_CHANGE = ("epochs", "max_steps_per_epoch", "optimizer", "lr_scheduler", "clip_grad_norm", "seed",
              # what the loss is (DPO's beta, a distillation's divergence and teacher, QAT's rounding);
              # recipes without the key store None
              "loss", "kd_loss", "kd_ratio", "teacher_checkpoint_dir", "quantizer", "fake_quant_after_n_steps")
# Settings that set the run's length: changed, they extend or shorten it.
LENGTH = ("epochs", "max_steps_per_epoch")
# Fingerprint entries copied from the user's dataset node: one that the checkpoint lacks is a
# key added since, so it is compared too (other entries it lacks are newer than the checkpoint).
FROM_THE_CONFIG = ("dataset",)


def resume_settings(settings: Any, world_size: int) -> dict[str, Any]:
    """The settings a resume compares (MUST_MATCH and MAY_CHANGE), as plain values."""
    from omegaconf import OmegaConf

    def plain(value):
        return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value

    out = {key: plain(getattr(settings, key, None)) for key in MUST_MATCH + MAY_CHANGE if key != "world_size"}
    out["world_size"] = world_size
    return out


def exists(folder: Path) -> bool:
    """Whether `folder` holds a training state (one process, or rank 0 of several)."""
    return (Path(folder) / FILENAME).is_file() or (Path(folder) / _rank_file(0)).is_file()


def _rank_file(rank: int) -> str:
    return f"training_state_rank{rank}.pt"


def save(folder: Path, *, counters: Any, model: Any, optimizer: Any, scheduler: Any, loader: Any, rng: dict,
         settings: dict, fingerprint: dict, dist: Any) -> None:
    """Write the training state into `folder` (every rank calls it).

    `settings` comes from `resume_settings`, `fingerprint` from
    `tunelib.training.fingerprint.run_fingerprint`. One process writes `training_state.pt`.
    Under torchrun each rank writes its own `training_state_rank<r>.pt` (random state and data
    position), and the sharded optimizer state goes through torch.distributed.checkpoint into
    `optimizer/`.
    """
    state = {
        "counters": asdict(counters),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "loader": loader.state_dict(),
        "rng": rng,
        "settings": settings,
        "fingerprint": fingerprint,
    }
    if not dist.enabled:
        torch_save({**state, "optimizer": optimizer.state_dict()}, Path(folder) / FILENAME)
        return
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    optimizers = _optimizers(optimizer)
    dcp.save({"optimizer": get_optimizer_state_dict(model, optimizers)}, checkpoint_id=str(Path(folder) / "optimizer"))
    torch_save(state, Path(folder) / _rank_file(dist.rank))


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
                              "same number of processes")
    return load_weights_only(path)


def restore_optimizer(folder: Path, saved: dict, model: Any, optimizer: Any, dist: Any) -> None:
    """Put the saved optimizer state back (from the file, or from `optimizer/` under torchrun)."""
    if "optimizer" in saved:
        optimizer.load_state_dict(saved["optimizer"])
        return
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    optimizers = _optimizers(optimizer)
    state = {"optimizer": get_optimizer_state_dict(model, optimizers)}
    dcp.load(state, checkpoint_id=str(Path(folder) / "optimizer"))
    set_optimizer_state_dict(model, optimizers, state["optimizer"])


def _optimizers(optimizer: Any) -> Any:
    """What torch.distributed.checkpoint is given: optimizer-in-backward's per-parameter
    optimizers (it takes a list), or the one optimizer."""
    return list(getattr(optimizer, "optimizers", None) or [optimizer])


def check_resume(saved: dict[str, Any], settings: dict[str, Any], fingerprint: dict[str, Any],
                 folder: Path) -> None:
    """Refuse a resume whose data position or numbers no longer apply; warn about allowed changes.

    `saved` is what `load` returned; `settings` (from `resume_settings`) and `fingerprint`
    (from `tunelib.training.fingerprint.run_fingerprint`) describe this run. Entries that the
    checkpoint lacks (saved by an older tunelib) are not compared, except dataset keys (a key
    added to the dataset node is a change).

    Raises:
        ConfigError: one line naming every changed entry, its old and its new value.
    """
    old, numbers = saved["settings"], saved.get("fingerprint")
    keys = [k for k in MUST_MATCH if not (k == "dataset" and numbers is not None)]
    changed = [(k, old[k], settings.get(k)) for k in keys if k in old and old[k] != settings.get(k)]
    if numbers is not None:
        added = [k for k in fingerprint if k.startswith(FROM_THE_CONFIG) and k not in numbers]
        changed += [(k, numbers.get(k), fingerprint.get(k)) for k in [*numbers, *added]
                    if numbers.get(k) != fingerprint.get(k)]
    if changed:
        raise ConfigError(_refusal(folder, changed))
    for key in MAY_CHANGE:
        if key in old and old[key] != settings.get(key):
            _warn(key, old[key], settings.get(key), settings.get("lr_scheduler"))


def _refusal(folder: Path, changed: list[tuple[str, Any, Any]]) -> str:
    what = ", ".join(f"{key} {before!r} -> {now!r}" for key, before, now in changed[:3])
    if len(changed) > 3:
        what += f" and {len(changed) - 3} more"
    if any(key in MUST_MATCH or key.startswith(("dataset", "tokenizer")) for key, _, _ in changed):
        why = "the saved position in the data no longer applies"
    else:
        why = "this run would not continue the checkpoint's training"
    return f"cannot resume from {folder}: {what} changed, so {why}; restore the old values or start a new output_dir"


def _warn(key: str, before: Any, now: Any, lr_scheduler: Any) -> None:
    if key == "seed":
        note = "the checkpoint's seed and random state are kept"
    elif key in LENGTH and lr_scheduler is None:
        return  # a longer or shorter run: the "Resuming from" line gives the new total, and nothing else changes
    elif key in LENGTH:
        note = ("the lr schedule is rebuilt for the new length, so the run matches an uninterrupted one only if "
                "the schedule does not depend on it (lr_scheduler=null, or get_constant_schedule_with_warmup)")
    else:
        note = "the run continues, but will not match an uninterrupted one"
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"Warning: resuming with {key} changed ({before!r} -> {now!r}): {note}", file=sys.stderr, flush=True)
