"""Assemble a fine-tuning run from a checked config, in one documented order.

`build_run` is what every fine-tuning recipe calls; read it top to bottom to see what happens
before the first step:

 1. the process: torchrun peers, device, dtype, the resume point, the seed
 2. the tokenizer, then the model on the meta device with its adapters (apply_peft adds them);
    the recipe's `Recipe` says what it trains (checked against the model) and its objective
 3. the adapters' first values (small, the same on every rank); only the trained part trainable
 4. model transformations: activation checkpointing, offloading, compile, FSDP2 (written once,
    any family), all while the base weights are still on meta
 5. the base weights streamed in: under FSDP2 each rank reads only its own rows (NF4 for QLoRA
    from each whole weight, keeping its piece); then DoRA magnitudes, and on resume the
    trained adapters, which win over the base
 6. data: datasets (a list is combined), a token-id check against the model, loaders
 7. the objective (tunelib.training.objectives), with the frozen models it needs (a teacher,
    a reference; built, sharded and loaded like the trained one), optimizer, schedule, loggers
 8. on resume: optimizer, schedule, data position, random state and counters restored

Saves stream the other way (`tunelib.training.HFCheckpointer.save`): one decoder layer is
gathered, merged and written at a time.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from tunelib.checkpoint import atomic, training_state, writes
from tunelib.checkpoint.hf_load import load_hf_weights
from tunelib.checkpoint.lock import OutputDirLock
from tunelib.config import instantiate
from tunelib.data import build_loader, check_token_ids, combine
from tunelib.errors import CheckpointError, ConfigError, NothingToDo
from tunelib.peft import apply_peft
from tunelib.training import precision, qat_setup, report, runtime, transforms
from tunelib.training.checkpointer import HFCheckpointer
from tunelib.training.distributed import Dist
from tunelib.training.estimate import estimate
from tunelib.training.fingerprint import run_fingerprint
from tunelib.training.loggers import JSONLLogger, MetricLoggers
from tunelib.training.loop import Run, TrainState
from tunelib.training.objective_setup import Parts, built, cost as objective_cost
from tunelib.training.optim import OptimizerInBackward
from tunelib.training.signals import StopOnSignal, TermDuringSetup
from tunelib.training.trained import LLAMA_ADAPTER, Recipe, Trained


@dataclass
class Built:
    """What `build_run` returns: the run, plus what the recipe reports at the end.

    Use it as a context manager around training: on the way out it closes the loggers,
    puts back the signal handlers, leaves the process group and releases output_dir's lock,
    whatever happened.
    """

    run: Run
    checkpointer: object
    stop: StopOnSignal
    resumed_from: atomic.Checkpoint | None
    recipe: Recipe
    trains: Trained
    output_lock: OutputDirLock | None = None  # held by rank 0 only

    def __enter__(self) -> "Built":
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.run.logger.close()
            self.stop.restore()
            self.run.dist.close()
        finally:
            if self.output_lock is not None:
                self.output_lock.release()

    def report(self, *, adapter: bool, merged: bool) -> int:
        """Print what the run did, where the model is, how to load it and what to try next, and
        write output_dir/summary.json; a stopped run prints how to resume it instead.

        Returns:
            The exit code: 0, or 128 + the signal that stopped the run.
        """
        run, out = self.run, self.checkpointer.output_dir
        if self.stop.signum is not None:
            if run.dist.is_main:
                command = report.resume_command(self.recipe.name, out, run.dist.world_size)
                print(f"Stopped at step {run.state.step} of {run.total_steps}; a checkpoint is saved in {out}. "
                      f"Resume with:\n  {command}", flush=True)
            return self.stop.exit_code
        if run.dist.is_main:
            final, base = out / "final", self.checkpointer.base_model_name()
            written = run.summary.write(out, report.outputs(final))
            lines = [report.final_message(final, base, adapter=adapter, merged=merged), "",
                     *run.summary.lines(), f"  (also in {written})", "", "Try next:",
                     *report.next_commands(final, base, adapter=adapter, merged=merged,
                                           prompt=getattr(run.loader.dataset, "example_prompt", None))]
            print("\n".join(lines), flush=True)
        return 0


def build_run(cfg, recipe: Recipe) -> Built:
    """Build everything `tunelib.training.train` needs from the config of `recipe`.

    Raises:
        ConfigError, DataError, CheckpointError: bad input, before any step runs (also: another
            run holds output_dir). The folders this call created for output_dir are removed
            again when they are still empty, and output_dir's lock is released.
    """
    # Rules between settings (batch_size >= 1, optimizer_in_bwd without accumulation) were
    # checked with the config, by the recipe schema's `value_problems`, so `tune validate` sees them too.
    # The checkpointer checks both folders (output_dir must not be inside checkpoint_dir)
    # before output_dir is created, so a refused run leaves nothing behind.
    checkpointer = _checkpointer(cfg)
    out = Path(cfg.output_dir)
    # Under torchrun rank 0 alone makes, locks and later takes back output_dir; the other ranks
    # write into it only when they save, after barriers that rank 0 passes once it exists.
    first = _global_rank() == 0
    created = _missing_folders(out) if first else []
    output_lock = None
    with TermDuringSetup() as term:
        try:
            if first:
                _make_output_dir(out)
                output_lock = OutputDirLock.take(out)
                _check_writable(out)
            return _build(cfg, recipe, checkpointer, output_lock, term)
        except BaseException:
            term.ignore()  # torchrun may stop this rank now: finish taking back what it made first
            _give_back(output_lock, created)
            raise


def _build(cfg, recipe: Recipe, checkpointer, output_lock: OutputDirLock | None, term: TermDuringSetup) -> Built:
    runtime.configure_cuda_allocator(cfg.device)  # before CUDA starts: its allocator reads it once
    device = runtime.resolve_device(cfg.device, _local_rank())
    runtime.set_cpu_threads(cfg.cpu_threads)
    runtime.return_freed_host_memory()
    dist = Dist.from_env(device, cfg.dist_timeout_seconds)
    if cfg.log_level is not None and dist.is_main:  # the other processes show warnings and up, as before
        logging.getLogger("tunelib").setLevel(cfg.log_level)
    dtype = runtime.resolve_dtype(cfg.dtype, device)
    resume = checkpointer.resume_point(cfg.resume_from_checkpoint)
    dist.barrier()  # every rank decided before any writes into output_dir
    saved = None if resume is None else training_state.load(resume.path, dist.rank, dist.world_size)
    seed = runtime.set_seed(saved["counters"]["seed"] if saved else cfg.seed)

    tokenizer = instantiate(cfg.tokenizer)
    model = _model(cfg)
    trains = recipe.trained_for(model)
    dist.say(estimate(cfg, model, trains.name, world_size=dist.world_size, device=device, time_step=False,
                      extra=objective_cost(cfg, recipe.objective, trains)).one_line())
    settings = training_state.resume_settings(cfg, dist.world_size)
    numbers = run_fingerprint(cfg, model, tokenizer, adapters=trains.adapters)
    if saved is not None:  # before any weight is read, so a changed model or adapter is named, not a shape error
        training_state.check_resume(saved, settings, numbers, resume.path)
    # FSDP2's CPU offload keeps the shards (weights, adapters) in CPU memory; compute stays on `device`.
    held = torch.device("cpu") if dist.enabled and cfg.fsdp_cpu_offload else device
    trains.start(model, held, precision.adapter_dtype(cfg, dtype))
    _transform(model, cfg, dist, device, cast_params=not trains.adapters)
    # Sharded first, then filled: under FSDP2 each rank reads only its own rows of each weight.
    checkpointer.load_model(model, dtype=precision.stored_dtype(cfg, dtype), device=held, resume=resume,
                            buffer_device=device)
    trains.finish(model, held, precision.adapter_dtype(cfg, dtype))
    if resume is not None:  # last: what the checkpoint trained (adapters, v2's norms) wins over the base
        checkpointer.load_adapter(model, resume)
    dist.say(_parameter_counts(model))
    trainable = [p for p in model.parameters() if p.requires_grad]  # the loaded (and sharded) tensors

    loader = _loader(cfg, cfg.dataset, tokenizer, model, dist, seed, cfg.batch_size, shuffle=cfg.shuffle)
    _check_accumulation(cfg, len(loader), dist)
    val_loader = None
    if cfg.dataset_val is not None:
        val_loader = _loader(cfg, cfg.dataset_val, tokenizer, model, dist, seed,
                             cfg.batch_size_val or cfg.batch_size, shuffle=False)

    frozen = _frozen_builder(cfg, dist, device, held, precision.stored_dtype(cfg, dtype))
    objective = recipe.objective(cfg, Parts(model=model, trains=trains, loader=loader, dist=dist, device=device,
                                            fresh=resume is None, frozen=frozen))
    objective = precision.compute_in(objective, cfg, device, dtype, sharded=dist.enabled)
    if cfg.compile:
        transforms.compile_loss(objective)
    optimizer = _optimizer(cfg, trainable)
    state = TrainState(seed=seed)
    run = Run(model=model, optimizer=optimizer, scheduler=None, objective=objective, loader=loader,
              val_loader=val_loader, save=None, logger=None, dist=dist, device=device, settings=cfg,
              state=state, optimizer_in_bwd=isinstance(optimizer, OptimizerInBackward), trainable=trainable)
    run.scheduler = _scheduler(cfg, optimizer, run.total_steps)
    run.save = _saver(cfg, checkpointer, trains, settings, numbers)
    run.profiler = instantiate(cfg.profiler) if cfg.profiler is not None else None
    run.step_hooks += qat_setup.step_hooks(cfg)  # QAT's fake_quant_after_n_steps
    if saved is not None:
        _restore(run, saved, resume)
        _set_aside_later(checkpointer, resume, dist)
    term.end()
    stop = StopOnSignal(dist)  # installed once nothing more can refuse the resume
    run.stop_requested = stop.requested
    run.logger = _logger(cfg, dist, _logged_until(cfg, saved, state))
    _write_config(cfg, dist)
    return Built(run, checkpointer, stop, resume, recipe, trains, output_lock)


# -- 1. the process ------------------------------------------------------------------------


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def _global_rank() -> int:
    return int(os.environ.get("RANK", 0))


def _missing_folders(out: Path) -> list[Path]:
    """The folders of `out` that do not exist yet, deepest first."""
    return [folder for folder in [out, *out.parents] if not folder.exists()]


def _make_output_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"output_dir {out} is not writable: {e.strerror or e}") from None


def _check_writable(out: Path) -> None:
    probe = out / f".tunelib_write_test_{_local_rank()}_{os.getpid()}"
    try:
        probe.write_text("ok")
    except OSError as e:
        raise ConfigError(f"output_dir {out} is not writable: {e.strerror or e}") from None
    finally:
        # A full disk creates the file and then refuses its bytes: it must not stay behind.
        probe.unlink(missing_ok=True)


def _give_back(output_lock: OutputDirLock | None, created: list[Path]) -> None:
    """Undo what a refused run did to output_dir: its lock, and the folders it made while still empty."""
    if output_lock is not None:
        output_lock.release()
    for folder in created:
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue  # mkdir stopped above it
        except OSError:
            break  # not empty: something else is in it, and so in every folder above


def _checkpointer(cfg):
    keep = {} if cfg.keep_last_n_checkpoints is None else {"keep_last_n_checkpoints": cfg.keep_last_n_checkpoints}
    if cfg.checkpointer is None:
        return HFCheckpointer(cfg.checkpoint_dir, cfg.output_dir, **keep)
    if "keep_last_n_checkpoints" in cfg.checkpointer:  # the component's own setting wins
        keep = {}
    return instantiate(cfg.checkpointer, **keep)


# -- 2-4. the model -------------------------------------------------------------------------


def _model(cfg) -> torch.nn.Module:
    """The config's model on the meta device, with the adapters its `model` node asks for."""
    return apply_peft(instantiate(cfg.model, checkpoint_dir=cfg.checkpoint_dir))


def _parameter_counts(model: torch.nn.Module) -> str:
    trainable = [p for p in model.parameters() if p.requires_grad]
    total = sum(p.numel() for p in model.parameters())
    count = sum(p.numel() for p in trainable)
    return f"Model: {total / 1e6:,.1f}M parameters, {count / 1e6:,.3f}M trainable ({100 * count / total:.2f}%)"


def _transform(model: torch.nn.Module, cfg, dist: Dist, device: torch.device, *, cast_params: bool) -> None:
    """Activation checkpointing (and offloading), compile, FSDP2, in that order (each wraps the decoder layers)."""
    qat_setup.prepare(model, cfg)  # QAT recipes' fake-quantized linears, swapped in before anything wraps them
    if cfg.enable_activation_offloading and not cfg.enable_activation_checkpointing:
        raise ConfigError("enable_activation_offloading needs enable_activation_checkpointing=True")
    if cfg.enable_activation_offloading and device.type != "cuda":
        raise ConfigError("enable_activation_offloading moves activations from GPU to CPU memory; it needs device=cuda")
    if cfg.enable_activation_checkpointing:
        transforms.activation_checkpointing(model, every=cfg.ac_option if cfg.ac_mode == "selective" else 1)
    if cfg.enable_activation_offloading:
        transforms.activation_offloading(model, device)
    # How attention runs is the decoder's attribute (the model code knows no settings); set
    # before compiling, so the compiled layers trace the kernels it picks.
    model.attention_backend = cfg.attention_backend
    if cfg.compile:
        transforms.compile_layers(model)
    if dist.enabled:
        # Adapter runs gather each weight in its own dtype, so fp32 adapters compute in fp32 beside
        # the bf16 base as on one device; full fine-tuning computes in `dtype` whatever it stores.
        transforms.shard(model, cfg, device, cast_params=cast_params)


# -- 5. data ---------------------------------------------------------------------------------


def _loader(cfg, node, tokenizer, model, dist: Dist, seed: int, batch_size: int, shuffle: bool):
    nodes = list(node) if isinstance(node, (list, tuple)) or _is_list(node) else [node]
    dataset = combine([instantiate(n, tokenizer) for n in nodes], seed=seed)
    check_token_ids(dataset, model.config.vocab_size)
    return build_loader(dataset, batch_size=batch_size, shuffle=shuffle, seed=seed,
                        rank=dist.rank, world_size=dist.world_size, pad_id=tokenizer.pad_id,
                        pad_to_multiple_of=cfg.pad_to_multiple_of or 1, num_workers=cfg.num_workers, pin_memory=_pin_memory(cfg, dist.device))


def _pin_memory(cfg, device: torch.device) -> bool:
    """Whether the loader pins batches: `pin_memory`, auto meaning on for CUDA.

    Raises:
        ConfigError: pin_memory=True on a run that resolved to the CPU.
    """
    if cfg.pin_memory == "auto":
        return device.type == "cuda"
    if cfg.pin_memory and device.type != "cuda":
        raise ConfigError(f"pin_memory=True speeds up copies to a GPU, but this run is on {device}; set pin_memory=auto")
    return bool(cfg.pin_memory)


def _check_accumulation(cfg, batches: int, dist: Dist) -> None:
    """Refuse accumulation over more batches than an epoch gives: no optimizer step would run."""
    steps = cfg.gradient_accumulation_steps
    if batches >= steps:
        return
    per = f" on each of {dist.world_size} processes" if dist.world_size > 1 else ""
    fix = f"set gradient_accumulation_steps={batches} or less" if batches else "lower batch_size"
    raise ConfigError(f"gradient_accumulation_steps={steps}, but the data gives only {batches} batches of "
                      f"{cfg.batch_size} per epoch{per}, so no optimizer step would run; {fix} (or add data)")


def _is_list(node) -> bool:
    from omegaconf import ListConfig

    return isinstance(node, ListConfig)


# -- 6. objective, optimizer, schedule, loggers -------------------------------------------------


def _frozen_builder(cfg, dist: Dist, device: torch.device, held: torch.device, dtype: torch.dtype):
    """`frozen(node, folder)`: the model of config node `node` with `folder`'s weights, frozen,
    built, transformed and sharded as the trained one is (a teacher, or DPO's reference copy)."""

    def frozen(node, folder: str) -> torch.nn.Module:
        model = instantiate(node, checkpoint_dir=folder)
        if getattr(model, "adapter_options", None) is not None:
            raise ConfigError(f"{node._component_} is a frozen model here (a teacher or a reference); remove its "
                              "adapter keys (lora_*, adapter)")
        for p in model.parameters():
            p.requires_grad_(False)
        model.attention_backend = cfg.attention_backend
        if cfg.compile:
            transforms.compile_layers(model)
        if dist.enabled:
            transforms.shard(model, cfg, device, cast_params=True)
        load_hf_weights(model, folder, dtype=dtype, device=held, buffer_device=device)
        return model.eval()

    return frozen


def _optimizer(cfg, trainable: list[torch.nn.Parameter]):
    options = precision.optimizer_options(cfg)
    if getattr(cfg, "optimizer_in_bwd", False):
        return OptimizerInBackward(trainable, lambda params: built(cfg.optimizer, "optimizer", params, **options))
    return built(cfg.optimizer, "optimizer", trainable, **options)


def _scheduler(cfg, optimizer, total_steps: int):
    if cfg.lr_scheduler is None:
        return None
    return built(cfg.lr_scheduler, "lr_scheduler", optimizer, num_training_steps=total_steps)


def _logger(cfg, dist: Dist, resumed_step: int | None) -> MetricLoggers:
    if not dist.is_main:
        return MetricLoggers([])
    node = cfg.metric_logger
    nodes = [] if node is None else list(node) if _is_list(node) else [node]
    loggers = [instantiate(n) for n in nodes]
    # metrics.jsonl is always written: resume, `tune` summaries and comparisons read it, so
    # choosing TensorBoard or W&B adds to it instead of replacing it.
    jsonl = JSONLLogger(cfg.output_dir)
    if not any(isinstance(x, JSONLLogger) and x.path.resolve() == jsonl.path.resolve() for x in loggers):
        loggers.insert(0, jsonl)
    logger = MetricLoggers(loggers)
    if resumed_step is not None:
        logger.resume(resumed_step)
    from omegaconf import OmegaConf

    logger.log_config(OmegaConf.to_container(cfg))
    return logger


def _logged_until(cfg, saved: dict | None, state: TrainState) -> int | None:
    """The last step whose metrics a resumed run keeps; None when the run is not a resume."""
    if saved is not None:
        return state.step
    # A resume that found no checkpoint starts over: the log of the run it replaces goes too.
    return 0 if cfg.resume_from_checkpoint else None


def _write_config(cfg, dist: Dist) -> None:
    if dist.is_main:
        from omegaconf import OmegaConf

        path = Path(cfg.output_dir) / "config.yaml"
        try:
            writes.replace_text(path, OmegaConf.to_yaml(cfg))
        except OSError as e:
            raise ConfigError(f"output_dir {cfg.output_dir} is not writable: cannot write {path.name}: "
                              f"{e.strerror or e}") from None


# -- saving and resuming ----------------------------------------------------------------------


def _saver(cfg, checkpointer, trains: Trained, settings: dict, numbers: dict):
    """`save(run, final)`: a checkpoint with the model, the config and the training state.

    `settings` and `numbers` (the run's fingerprint) go into every training state, the final
    one included: it is what lets a finished run be extended, and it holds no weights.
    """
    from omegaconf import OmegaConf

    adapter_only = bool(getattr(cfg, "save_adapter_weights_only", False))
    if trains is LLAMA_ADAPTER:  # LLaMA-Adapter writes a merged folder only when v2 is to be folded
        adapter_only = not cfg.fold_adapter_v2

    def save(run: Run, final: bool) -> Path:
        def extra(folder: Path) -> None:
            if run.dist.is_main:
                (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
            training_state.save(folder, counters=run.state, model=run.model, optimizer=run.optimizer,
                                scheduler=run.scheduler, loader=run.loader, rng=runtime.rng_state(),
                                settings=settings, fingerprint=numbers, dist=run.dist)

        folder = checkpointer.save(run.model, step=run.state.step, final=final, adapter_only=adapter_only,
                                   extra=extra, dist=run.dist)
        run.dist.say(f"Saved {'final model' if final else 'checkpoint'} to {folder}")
        return folder

    return save


def _restore(run: Run, saved: dict, resume: atomic.Checkpoint) -> None:
    """Put the saved counters, optimizer, schedule, data position and random state back.

    Raises:
        NothingToDo: `resume` is the final checkpoint and this config does not lengthen the run.
    """
    for key, value in saved["counters"].items():
        setattr(run.state, key, value)
    if resume.final and _steps_left(run) == 0:
        s = run.settings
        raise NothingToDo(f"Nothing left to train: {resume.path} already ends this run (step {run.state.step}; "
                          f"epochs={s.epochs}, max_steps_per_epoch={s.max_steps_per_epoch}); raise epochs or "
                          "max_steps_per_epoch to train further")
    training_state.restore_optimizer(resume.path, saved, run.model, run.optimizer, run.dist)
    if run.scheduler is not None and saved["scheduler"] is not None:
        run.scheduler.load_state_dict(saved["scheduler"])
    run.loader.load_state_dict(saved["loader"])
    runtime.set_rng_state(saved["rng"])
    lr = float(run.optimizer.param_groups[0]["lr"])
    run.dist.say(f"Resuming from {resume.path}: step {run.state.step} of {run.total_steps}, "
                 f"epoch {run.state.epoch + 1} of {run.settings.epochs}, lr {lr:.3g}")


def _steps_left(run: Run) -> int:
    """Optimizer steps between the restored counters and the end of this config's run."""
    s, state = run.settings, run.state
    if state.epoch >= s.epochs:
        return 0
    rest_of_epoch = max(run.steps_per_epoch - state.step_in_epoch, 0)
    return rest_of_epoch + run.steps_per_epoch * (s.epochs - state.epoch - 1)


def _set_aside_later(checkpointer, resume: atomic.Checkpoint, dist: Dist) -> None:
    """Move the checkpoints after `resume` out of the way: this run starts another branch from it."""
    if dist.is_main:
        moved = checkpointer.set_aside_after(resume)
        if moved is not None:
            folder, names = moved
            print(f"Moved {', '.join(names)} to {folder}: they come after {resume.path} on the branch this "
                  "resume abandons (nothing deleted)", flush=True)
    dist.barrier()  # no rank saves before they are gone


# -- what `tune validate` checks beyond the config ------------------------------------------


def preflight(cfg, recipe: Recipe) -> list[str]:
    """The checks `build_run` makes that need neither weights nor data, for `tune validate`.

    The model is built on the meta device (adapter module names, what the recipe trains), and the
    optimizer, schedule and loss are built on a stand-in parameter, so a value only they
    refuse (a negative learning rate) is caught without loading anything.

    Returns:
        Notes for the user (e.g. checkpoint_dir is not downloaded yet, so the model was only
        checked as far as its builder allows without it).

    Raises:
        ConfigError, CheckpointError: what `tune run` would refuse before its first step.
    """
    notes = []
    if Path(cfg.checkpoint_dir).is_dir():
        checkpointer = _checkpointer(cfg)
        if hasattr(checkpointer, "named_resume"):  # torchtune's recipe_checkpoint: checked as `tune run` would
            checkpointer.named_resume(cfg.resume_from_checkpoint)
        model = _model(cfg)
    else:
        notes.append(f"checkpoint_dir {cfg.checkpoint_dir} does not exist yet: `tune download REPO_ID "
                     f"--output-dir {cfg.checkpoint_dir}` before `tune run`")
        try:
            model = _model(cfg)
        except CheckpointError:
            model = None  # a builder that reads config.json: checked once the folder exists
    if model is not None:
        recipe.trained_for(model)
    stand_in = torch.nn.Parameter(torch.zeros(1))
    optimizer = built(cfg.optimizer, "optimizer", [stand_in], **precision.optimizer_options(cfg))
    if cfg.lr_scheduler is not None:
        _scheduler(cfg, optimizer, total_steps=1)
    recipe.objective(cfg, None)
    if cfg.profiler is not None:
        instantiate(cfg.profiler)  # an activity the machine lacks is refused here too
    return notes
