"""Run a sweep's points as `tune run` processes, one folder each, and keep `sweep.json` up to date.

A point's status is one of pending, running, done, failed, stopped. Run again on the same
folder, a sweep skips the points that are done, resumes the stopped (or killed) ones from
their newest checkpoint (`resume_from_checkpoint=True`) and retries the failed ones.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tunelib.errors import UserError
from tunelib.experiments.grid import Point

STATE_FILE = "sweep.json"
LOCK_FILE = ".sweep.lock"  # held while a sweep runs in the folder
LOG_FILE = "run.log"  # each point's `tune run` output, in its folder
POLL_SECONDS = 0.2


@dataclass
class Sweep:
    """What a sweep runs (`recipe`, `config`, `overrides` shared by every point) and its points' states."""

    folder: Path
    recipe: str
    config: str
    overrides: list[str]
    grid: dict[str, list[str]]
    points: list[dict] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.folder / STATE_FILE

    def save(self) -> None:
        """Write sweep.json whole (a new file renamed over the old), so a reader never sees half of it."""
        tmp = self.path.with_name(f".{STATE_FILE}.tmp")
        body = {"recipe": self.recipe, "config": self.config, "overrides": self.overrides, "grid": self.grid,
                "points": self.points}
        tmp.write_text(json.dumps(body, indent=2) + "\n")
        os.replace(tmp, self.path)


def open_sweep(folder: Path, recipe: str, config: str, overrides: list[str], grid: dict[str, list[str]],
               points: list[Point]) -> Sweep:
    """The sweep in `folder`: the one sweep.json holds, with `points` added, or a new one.

    Raises:
        UserError: sweep.json is unreadable, or holds a sweep of another recipe, config or overrides.
    """
    folder.mkdir(parents=True, exist_ok=True)
    sweep = Sweep(folder, recipe, config, list(overrides), grid)
    if sweep.path.exists():
        try:
            saved = json.loads(sweep.path.read_text())
        except ValueError as e:
            raise UserError(f"{sweep.path} is not readable JSON ({e}); move it away to start the sweep afresh") from None
        given = {"recipe": recipe, "config": config, "overrides": list(overrides)}
        differs = [key for key, value in given.items() if saved.get(key) != value]
        if differs:
            raise UserError(f"{folder} holds a sweep with another {', '.join(differs)} ({STATE_FILE}); "
                            "resume it with the same command, or choose another --output-dir")
        sweep.points = list(saved.get("points", []))
        sweep.grid = {**saved.get("grid", {}), **grid}
    known = {p["name"]: p for p in sweep.points}
    for point in points:
        wanted = dict(point.overrides)
        if point.name in known and known[point.name].get("overrides") != wanted:
            raise UserError(f"{folder}/{point.name} belongs to a point with other values ({known[point.name]['overrides']}); "
                            "choose another --output-dir")
        if point.name not in known:
            entry = {"name": point.name, "overrides": wanted, "status": "pending"}
            sweep.points.append(entry)
            known[point.name] = entry
    return sweep


def lock(folder: Path):
    """Take the folder's sweep lock (held until the returned file is closed or the process ends).

    Raises:
        UserError: another sweep holds it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK_FILE, "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UserError(f"another tune sweep is running in {folder}; wait for it, or stop it (Ctrl-C) first") from None
    return handle


def write_config(run_dir: Path, cfg) -> None:
    """A point's resolved config as `run_dir/config.yaml`, before its run starts (which writes the same
    file again), so a point that fails early still shows what it was."""
    from omegaconf import OmegaConf  # the config's own type; torch-free

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))


def is_done(entry: dict, folder: Path) -> bool:
    """A point finished: its run wrote summary.json (which a run writes only when it ends), and it was
    recorded done, or still running when the sweep itself was killed."""
    return entry.get("status") in ("done", "running") and (folder / entry["name"] / "summary.json").is_file()


def has_started(run_dir: Path) -> bool:
    """The folder holds a run to continue (a metrics log or a checkpoint): it gets resume_from_checkpoint=True."""
    return (run_dir / "metrics.jsonl").is_file() or any(run_dir.glob("step_*")) or (run_dir / "final").is_dir()


def device_slots(parallel: int, gpus: list[str]) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES of each of `parallel` slots: the GPUs split into `parallel` near-equal groups
    (one GPU shared round-robin when there are fewer GPUs than slots); None each without GPUs."""
    if not gpus:
        return [None] * parallel
    if parallel > len(gpus):
        return [gpus[i % len(gpus)] for i in range(parallel)]
    bounds = [round(i * len(gpus) / parallel) for i in range(parallel + 1)]
    return [",".join(gpus[bounds[i]:bounds[i + 1]]) for i in range(parallel)]


def visible_gpus() -> list[str]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES's list when set, else every CUDA device torch sees."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [g.strip() for g in given.split(",") if g.strip() and g.strip() != "-1"]
    import torch  # heavy; only a sweep that is about to run needs it

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


@dataclass
class _Running:
    entry: dict
    proc: subprocess.Popen
    log: object
    slot: int
    started: float


class Runner:
    """Runs the points of a sweep, `parallel` at a time, each in its own process group.

    A first SIGINT or SIGTERM to the sweep is passed on as SIGTERM: every run saves a
    checkpoint and stops, and its point is marked stopped. A second one passes SIGINT, which
    stops the runs at once.
    """

    def __init__(self, sweep: Sweep, command: Callable[[dict, bool], list[str]], parallel: int,
                 gpus: list[str], say: Callable[[str], None] = print):
        self.sweep, self.command, self.say = sweep, command, say
        self.slots = device_slots(parallel, gpus)
        self.signals: list[int] = []
        self.running: list[_Running] = []
        self.total = 0

    def run(self, todo: list[dict]) -> int | None:
        """Run `todo` (entries of sweep.points); returns the signal that stopped the sweep, or None."""
        queue, self.total = list(todo), len(todo)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while queue or self.running:
                while queue and not self.signals and len(self.running) < len(self.slots):
                    self._start(queue.pop(0), self.total - len(queue))
                time.sleep(POLL_SECONDS)
                for job in [job for job in self.running if job.proc.poll() is not None]:
                    self._finish(job)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.signals[0] if self.signals else None

    def _on_signal(self, signum, frame) -> None:
        self.signals.append(signum)
        passed = signal.SIGTERM if len(self.signals) == 1 else signal.SIGINT
        for job in self.running:
            try:
                os.killpg(job.proc.pid, passed)
            except ProcessLookupError:
                pass  # it has just exited; _finish records it

    def _start(self, entry: dict, number: int) -> None:
        run_dir = self.sweep.folder / entry["name"]
        resume = has_started(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        slot = min(set(range(len(self.slots))) - {job.slot for job in self.running})
        env = dict(os.environ)
        if self.slots[slot] is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.slots[slot]
        log = open(run_dir / LOG_FILE, "a")
        # Its own session: a Ctrl-C reaches the sweep alone, which decides what each run is told.
        proc = subprocess.Popen(self.command(entry, resume), stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        entry.update(status="running", attempts=entry.get("attempts", 0) + 1, exit_code=None, error=None)
        if self.slots[slot] is not None:
            entry["cuda_visible_devices"] = self.slots[slot]
        self.sweep.save()
        self.running.append(_Running(entry, proc, log, slot, time.perf_counter()))
        how = "resuming from its checkpoint" if resume else "starting"
        self.say(f"[{number}/{self.total}] {entry['name']}: {how} (log: {run_dir / LOG_FILE})")

    def _finish(self, job: _Running) -> None:
        self.running.remove(job)
        job.log.close()
        code, entry = job.proc.returncode, job.entry
        entry["exit_code"] = code
        entry["seconds"] = round(entry.get("seconds", 0.0) + time.perf_counter() - job.started, 1)
        if code == 0:
            entry["status"] = "done"
            self.say(f"  {entry['name']}: done{_losses(self.sweep.folder / entry['name'])}")
        elif self.signals and code in (128 + signal.SIGTERM, 128 + signal.SIGINT, -signal.SIGTERM, -signal.SIGINT):
            entry["status"] = "stopped"
            self.say(f"  {entry['name']}: stopped (a rerun of the sweep resumes it)")
        else:
            entry["status"] = "failed"
            entry["error"] = last_error(self.sweep.folder / entry["name"] / LOG_FILE)
            self.say(f"  {entry['name']}: failed (exit code {code}): {entry['error']}")
        self.sweep.save()


def last_error(log: Path) -> str:
    """The line of a run's log that says why it failed: its `tune: error:` line, else its last line."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()] if log.exists() else []
    errors = [line for line in lines if line.startswith("tune: error:")]
    return (errors or lines or ["(no output)"])[-1][:500]


def _losses(run_dir: Path) -> str:
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return ""
    val = summary.get("val_loss")
    last = summary.get("last_loss")
    text = f", last loss {last:.4f}" if isinstance(last, (int, float)) else ""
    return text + (f", val_loss {val:.4f}" if isinstance(val, (int, float)) else "")
