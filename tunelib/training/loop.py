"""The training loop: written once, for every method, on one device or many.

Read `train` top to bottom: batches -> forward and objective -> backward (accumulating over
micro-batches, normalised by their total count of the objective's units: tokens, pairs) -> clip -> non-finite check ->
optimizer step -> log -> validate -> checkpoint -> stop if asked. Everything it uses is
assembled by the recipe into a `Run`.

The host reads the device once per optimizer step: the loss, the objective's metrics, the
gradient norm and whether to stop come back together in one small tensor (under torchrun after
one all-reduce). Counts come from the CPU batch before it moves, so a GPU is never drained
between kernels.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from tunelib.errors import TrainingStopped
from tunelib.training.distributed import Dist, sync_gradients
from tunelib.training.loss import count_tokens
from tunelib.training.memory import peak_memory, reset_peak
from tunelib.training.objectives import Objective
from tunelib.training.progress import Progress
from tunelib.training.summary import RunSummary


@dataclass
class TrainState:
    """The counters a checkpoint saves; with the optimizer, schedule, RNG and data position they make resume exact."""

    seed: int
    step: int = 0  # optimizer steps done
    epoch: int = 0
    step_in_epoch: int = 0
    tokens: int = 0  # trained (non-ignored) tokens, all ranks together
    nonfinite_skips: int = 0  # consecutive skipped steps


@dataclass
class Run:
    """Everything the loop works with, built by a recipe."""

    model: torch.nn.Module
    optimizer: Any  # a torch optimizer, or OptimizerInBackward
    scheduler: Any | None
    objective: Objective  # what turns a batch into a loss (tunelib.training.objectives)
    loader: Any  # tunelib.data loader: set_epoch, __iter__, __len__, state_dict
    val_loader: Any | None
    save: Callable[["Run", bool], Any]  # save(run, final) writes a checkpoint
    logger: Any
    dist: Dist
    device: torch.device
    settings: Any  # the checked config (TrainingSettings keys)
    state: TrainState
    stop_requested: Callable[[], bool] = lambda: False  # this process was asked to stop; the loop makes ranks agree
    optimizer_in_bwd: bool = False
    trainable: list[torch.nn.Parameter] = field(default_factory=list)
    summary: RunSummary = field(default_factory=RunSummary)  # what the run did, for its end
    profiler: Any = None  # a torch.profiler.profile stepped once per optimizer step (the `profiler` setting)
    # Called as hook(run) before each optimizer step's first forward (e.g. QAT starting fake quantization
    # after N steps); run.state.step is the number of steps done so far.
    step_hooks: list[Callable[["Run"], None]] = field(default_factory=list)

    @property
    def steps_per_epoch(self) -> int:
        steps = len(self.loader) // self.settings.gradient_accumulation_steps
        cap = self.settings.max_steps_per_epoch
        return min(steps, cap) if cap else steps

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.settings.epochs


def train(run: Run) -> TrainState:
    """Train until the configured epochs are done or a stop is requested; return the counters.

    Raises:
        TrainingStopped: a non-finite loss, or peers that stopped answering (the message
            names them); the last checkpoint is intact.
    """
    try:
        with run.profiler if run.profiler is not None else contextlib.nullcontext():
            return _train(run)
    except RuntimeError as e:
        if run.dist.enabled and _is_timeout(e):
            raise TrainingStopped(_timeout_message(run)) from None
        raise


def _is_timeout(error: BaseException) -> bool:
    text = str(error).lower()
    return "timed out" in text or "timeout" in text or "connection closed by peer" in text


def _timeout_message(run: Run) -> str:
    silent = run.dist.silent_ranks(seconds=5)
    who = f"rank(s) {', '.join(map(str, silent))}" if silent else "another rank"
    return (f"rank {run.dist.rank} waited {run.settings.dist_timeout_seconds} s for {who} at step "
            f"{run.state.step + 1}; it died or hangs (see its output). The last checkpoint in "
            f"{run.settings.output_dir} is intact; resume with resume_from_checkpoint=True")


def _train(run: Run) -> TrainState:
    s, state, model = run.settings, run.state, run.model
    progress = Progress(run.total_steps, start=state.step, enabled=run.dist.is_main)
    window = _Window()
    run.summary.begin(state.step, state.tokens)
    reset_peak(run.device)  # the peak logged from here on is training's, not loading's
    model.train()
    for epoch in range(state.epoch, s.epochs):
        if epoch > state.epoch:
            # Counters move to a new epoch only when it starts, so the final checkpoint says
            # "after step N of epoch E" and a longer run (more epochs or steps) can go on from it.
            state.epoch, state.step_in_epoch = epoch, 0
        batches = _epoch_batches(run, epoch)
        while state.step_in_epoch < run.steps_per_epoch:
            micro = [next(batches) for _ in range(s.gradient_accumulation_steps)]
            for hook in run.step_hooks:
                hook(run)
            # Counted on the CPU batches, before they move: all ranks' together, in one collective.
            step_units, step_tokens, real_tokens = run.dist.host_sum(
                [sum(run.objective.count(b) for b in micro), sum(count_tokens(b["labels"]) for b in micro),
                 sum(_real_tokens(b) for b in micro)])
            window.add(real_tokens)
            step_loss, step_metrics = torch.zeros((), device=run.device), {}
            for i, batch in enumerate(micro):
                batch = to_device(batch, run.device, run.objective)
                terms = run.objective(model, batch)
                loss = terms.loss / max(step_units, 1)
                sync_gradients(model, s.fsdp_gradient_sync, last=i == len(micro) - 1)
                # FSDP averages gradients over ranks; the loss is already a global mean, so undo it.
                (loss * run.dist.world_size).backward()
                step_loss += loss.detach()
                for name, value in terms.metrics.items():
                    step_metrics[name] = step_metrics.get(name, 0) + value.detach().double() / max(step_units, 1)
            read = _read_step(run, step_loss, _clip(run), step_metrics)  # the one host sync per step
            if not _finite(run, read):
                continue
            if not run.optimizer_in_bwd:
                run.optimizer.step()
                run.optimizer.zero_grad(set_to_none=True)
            if run.scheduler is not None:
                run.scheduler.step()
            state.step += 1
            state.step_in_epoch += 1
            state.tokens += int(step_tokens)
            if run.profiler is not None:
                run.profiler.step()
            run.summary.add_step(state.step, read.loss, state.tokens)
            if state.step % s.log_every_n_steps == 0 or state.step == run.total_steps:
                metrics = _metrics(run, read, window)
                if run.dist.is_main:
                    run.logger.log(state.step, metrics)
                progress.update(state.step, metrics)
            if s.run_val_every_n_steps and run.val_loader is not None and state.step % s.run_val_every_n_steps == 0:
                _validate(run)
            if read.stop:
                progress.close()
                run.save(run, False)
                _end_summary(run)
                return state
            if s.save_every_n_steps and state.step % s.save_every_n_steps == 0 and state.step < run.total_steps:
                run.save(run, False)
    progress.close()
    if run.val_loader is not None and s.run_val_every_n_steps and state.step % s.run_val_every_n_steps:
        _validate(run)  # the last step was not evaluated yet (once per evaluation, so once per step)
    run.save(run, True)
    _end_summary(run)
    return state


def _end_summary(run: Run) -> None:
    peak = peak_memory(run.device).get("peak_memory_gib")
    run.summary.end(run.dist.max(peak) if peak is not None else None)


def _epoch_batches(run: Run, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of `epoch`, starting after those a resumed run already trained on."""
    run.loader.set_epoch(epoch)
    batches = iter(run.loader)
    return batches


def _clip(run: Run) -> torch.Tensor | None:
    """Clip (or only measure) the gradient norm; None when gradients were applied in backward."""
    if run.optimizer_in_bwd:
        return None
    max_norm = run.settings.clip_grad_norm
    norm = torch.nn.utils.clip_grad_norm_(run.trainable, max_norm if max_norm is not None else float("inf"))
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def to_device(batch: dict[str, torch.Tensor], device: torch.device, objective) -> dict[str, torch.Tensor]:
    """The CPU `batch` on `device`, with what `objective.host_inputs` (if it has one) works out on the host.

    The copies do not wait for the device when the loader pinned the batch (pin_memory); the
    host's own additions are pinned too then. `num_tokens` stays behind: only the host uses it.
    """
    host = getattr(objective, "host_inputs", None)
    extra = host(batch) if host is not None else {}
    if device.type == "cuda" and batch["input_ids"].is_pinned():
        extra = {k: v.pin_memory() for k, v in extra.items()}
    return {k: v.to(device, non_blocking=True) for k, v in {**batch, **extra}.items() if k != "num_tokens"}


def _real_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Non-padding tokens of a CPU batch, for tokens per second."""
    return int(batch["num_tokens"]) if "num_tokens" in batch else batch["input_ids"].numel()


@dataclass
class _StepRead:
    """What the host learns from the device at the end of a step, all in one read."""

    loss: float  # the step's loss, all ranks together
    metrics: dict[str, float]  # the objective's own, means over the step's units
    grad_norm: float | None  # None when gradients were applied in backward
    bad_ranks: list[int]  # ranks whose own loss is not finite
    stop: bool  # some rank was asked to stop


def _read_step(run: Run, step_loss: torch.Tensor, grad_norm: torch.Tensor | None,
               metrics: dict[str, torch.Tensor]) -> _StepRead:
    """Read the step's loss, metrics, gradient norm and stop flag back to the host in one `tolist()`.

    Under torchrun one all-reduce of a small vector sums the losses and metrics and tells which
    ranks had a non-finite loss and whether any was asked to stop; the gradient norm is already global.
    """
    d, stop = run.dist, run.stop_requested()
    names = list(metrics)
    values = torch.cat([step_loss.double().reshape(1), *(metrics[n].reshape(1) for n in names)])
    if d.enabled:
        flags = torch.zeros(d.world_size + 1, dtype=torch.float64, device=run.device)
        flags[d.rank] = (~torch.isfinite(step_loss)).double()  # where it started: gradients mix all ranks
        flags[d.world_size] = float(stop)
        values = d.device_sum(torch.cat([values, flags]))
    if grad_norm is not None:
        values = torch.cat([values, grad_norm.double().reshape(1)])
    got = values.tolist()
    flags = 1 + len(names)
    if d.enabled:
        bad, stop = [r for r in range(d.world_size) if got[flags + r] > 0], got[flags + d.world_size] > 0
    else:
        bad = [] if _ok(got[0]) else [0]
    return _StepRead(got[0], dict(zip(names, got[1:flags])), got[-1] if grad_norm is not None else None, bad, stop)


def _finite(run: Run, read: _StepRead) -> bool:
    """True to step; False to skip this step; raise to stop. Every rank decides alike."""
    loss_value, norm = read.loss, float("nan") if read.grad_norm is None else read.grad_norm
    if not read.bad_ranks and _ok(loss_value) and (read.grad_norm is None or _ok(norm)):
        run.state.nonfinite_skips = 0
        return True
    step = run.state.step + 1
    what = f"loss {loss_value}" if not _ok(loss_value) else f"gradient norm {norm}"
    where = f" on rank {', '.join(map(str, read.bad_ranks))}" if run.dist.enabled and read.bad_ranks else ""
    run.optimizer.zero_grad(set_to_none=True)
    if run.settings.on_nonfinite == "skip" and run.state.nonfinite_skips < run.settings.max_nonfinite_skips:
        run.state.nonfinite_skips += 1
        run.state.step_in_epoch += 1  # the batches are consumed; move on to the next ones
        run.dist.say(f"Skipping step {step}: non-finite {what}{where} ({run.state.nonfinite_skips} in a row)")
        return False
    raise TrainingStopped(
        f"non-finite {what} at step {step}{where}; stopped before the optimizer step, so the last checkpoint "
        f"in {run.settings.output_dir} is intact (lower the lr, set clip_grad_norm, or on_nonfinite=skip)"
    )


def _ok(x: float) -> bool:
    return x == x and x not in (float("inf"), float("-inf"))


class _Window:
    """Tokens (all ranks) and time since the last log line, for tokens per second."""

    def __init__(self):
        self.tokens, self.t0 = 0, time.perf_counter()

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def take(self) -> tuple[int, float]:
        tokens, seconds = self.tokens, time.perf_counter() - self.t0
        self.tokens, self.t0 = 0, time.perf_counter()
        return tokens, seconds


def _metrics(run: Run, read: _StepRead, window: _Window) -> dict[str, Any]:
    tokens, seconds = window.take()
    metrics = {
        "loss": read.loss,
        **read.metrics,
        "lr": float(run.optimizer.param_groups[0]["lr"]),  # torchao optimizers keep it as a (CPU) tensor
        "tokens_per_second": tokens / max(seconds, 1e-9),
        "tokens_per_second_per_device": tokens / max(seconds, 1e-9) / run.dist.world_size,
        "epoch": run.state.epoch,
        "tokens": run.state.tokens,
    }
    if read.grad_norm is not None:
        metrics["grad_norm"] = read.grad_norm
    if run.settings.log_peak_memory_stats:
        peaks = peak_memory(run.device)  # allocator and kernel counters: no device sync
        metrics.update(zip(peaks, run.dist.host_max(list(peaks.values()))))  # the fullest device
    return metrics


@torch.no_grad()
def _validate(run: Run) -> float:
    """Mean validation loss per unit of the objective (token, pair), over all ranks; logged as val_loss."""
    run.model.eval()
    total, units = torch.zeros((), dtype=torch.float64, device=run.device), 0
    run.val_loader.set_epoch(0)
    for batch in run.val_loader:
        units += run.objective.count(batch)
        total += run.objective(run.model, to_device(batch, run.device, run.objective)).loss.double()
    run.model.train()
    total, units = run.dist.host_sum([total.item(), units])  # one read for the whole evaluation
    val_loss = total / max(units, 1)
    run.summary.val_loss = val_loss
    if run.dist.is_main:
        run.logger.log(run.state.step, {"val_loss": val_loss})
        print(f"step {run.state.step}: val_loss={val_loss:.4f}", flush=True)
    return val_loss
