"""Metric loggers: JSONL on disk (the default), text or JSONL files (DiskLogger), stdout, TensorBoard, W&B.

Each has `log(step, metrics)`, `log_config(config)` and `close()`. Only rank 0 logs.
TensorBoard and W&B are optional extras (`pip install tunelib[tensorboard]` / `[wandb]`),
imported when their logger is built.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Literal

from tunelib.checkpoint.writes import replace_text
from tunelib.errors import ConfigError, TrainingStopped


class JSONLLogger:
    """Append one JSON object per logged step to `log_dir/filename` (`metrics.jsonl`)."""

    def __init__(self, log_dir: str, filename: str = "metrics.jsonl"):
        self.path = Path(log_dir) / filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = None

    def resume(self, step: int) -> None:
        """Keep only the lines of steps up to `step` (none for 0): a run resumed from step N logs N+1.. once.

        A line cut short (a kill or a full disk in the middle of a write) is dropped, and said so.
        The file is replaced whole, so a failure here leaves it as it was.

        Raises:
            ConfigError: the file cannot be rewritten (full disk, permissions).
        """
        if not self.path.exists():
            return
        kept, torn = [], 0
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            row = _row(line)
            if row is None:
                torn += bool(line.strip())
            elif row.get("step", 0) <= step:
                kept.append(line)
        if torn:
            print(f"Dropped {torn} unreadable line(s) of {self.path} (a write cut short)", flush=True)
        try:
            replace_text(self.path, "".join(line + "\n" for line in kept))
        except OSError as e:
            raise ConfigError(f"cannot rewrite {self.path} for the resume: {e.strerror or e}; free space "
                              "(or fix permissions) and rerun") from None

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Append one line.

        Raises:
            TrainingStopped: the line cannot be written (full disk, permissions).
        """
        try:
            if self._file is None:
                self._file = open(self.path, "a")
            self._file.write(json.dumps({"step": step, **metrics}) + "\n")
            self._file.flush()
        except OSError as e:
            self._discard()
            raise TrainingStopped(f"cannot write metrics to {self.path} at step {step}: {e.strerror or e}; "
                                  "free space (or fix permissions), then rerun with resume_from_checkpoint=True "
                                  "to continue from the last checkpoint") from None

    def _discard(self) -> None:
        # What the failed write left in the buffer would fail again at close.
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None

    def log_config(self, config: dict) -> None:
        pass  # the recipe writes config.yaml beside the metrics

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class StdoutLogger:
    """Print `Step N | loss:1.234 lr:0.0003 ...` for each logged step."""

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        parts = " ".join(f"{k}:{_fmt(v)}" for k, v in metrics.items())
        print(f"Step {step} | {parts}", file=sys.stdout, flush=True)

    def log_config(self, config: dict) -> None:
        pass

    def close(self) -> None:
        pass


class DiskLogger:
    """Write each logged step to a file in `log_dir` (torchtune's DiskLogger).

    Args:
        log_dir: the folder; created if missing.
        filename: the file's name (default `log_<unix time>.<output_fmt>`, a new file per run).
        output_fmt: "txt" writes `Step N | loss:1.234 lr:0.0003` lines; "jsonl" one JSON object a line.
    """

    def __init__(self, log_dir: str, filename: str | None = None, output_fmt: Literal["txt", "jsonl"] = "txt"):
        if output_fmt not in ("txt", "jsonl"):
            raise ConfigError(f"DiskLogger output_fmt={output_fmt!r}; use txt or jsonl")
        self.output_fmt = output_fmt
        self.path = Path(log_dir) / (filename or f"log_{int(time.time())}.{output_fmt}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a")

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if self.output_fmt == "jsonl":
            line = json.dumps({"step": step, **metrics})
        else:
            line = f"Step {step} | " + " ".join(f"{k}:{_fmt(v)}" for k, v in metrics.items())
        self._file.write(line + "\n")
        self._file.flush()

    def log_config(self, config: dict) -> None:
        pass  # the recipe writes config.yaml into output_dir

    def close(self) -> None:
        self._file.close()


class TensorBoardLogger:
    """Write scalars for TensorBoard into `log_dir` (needs the `tensorboard` extra)."""

    def __init__(self, log_dir: str):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("TensorBoardLogger needs tensorboard: pip install 'tunelib[tensorboard]'") from None
        self._writer = SummaryWriter(log_dir=log_dir)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                self._writer.add_scalar(key, value, step)
        self._writer.flush()

    def log_config(self, config: dict) -> None:
        import yaml

        self._writer.add_text("config", "```\n" + yaml.safe_dump(config, sort_keys=False) + "```")

    def close(self) -> None:
        self._writer.close()


class WandBLogger:
    """Log to Weights & Biases (needs the `wandb` extra); `mode="offline"` works without network."""

    def __init__(self, project: str = "tunelib", entity: str | None = None, group: str | None = None,
                 name: str | None = None, log_dir: str | None = None, mode: str | None = None, **kwargs: Any):
        try:
            import wandb
        except ImportError:
            raise ConfigError("WandBLogger needs wandb: pip install 'tunelib[wandb]'") from None
        if log_dir:
            os.makedirs(log_dir, exist_ok=True)
        self._wandb = wandb
        self._run = wandb.init(project=project, entity=entity, group=group, name=name, dir=log_dir, mode=mode, **kwargs)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        self._run.log(metrics, step=step)

    def log_config(self, config: dict) -> None:
        self._run.config.update(config, allow_val_change=True)

    def close(self) -> None:
        self._run.finish()


class MetricLoggers:
    """Several loggers used as one."""

    def __init__(self, loggers: list):
        self.loggers = loggers

    def resume(self, step: int) -> None:
        for logger in self.loggers:
            if hasattr(logger, "resume"):
                logger.resume(step)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        for logger in self.loggers:
            logger.log(step, metrics)

    def log_config(self, config: dict) -> None:
        for logger in self.loggers:
            logger.log_config(config)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def _row(line: str) -> dict | None:
    """A JSONL line as a dict, or None when it is not one (cut short, or not ours)."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) else None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
