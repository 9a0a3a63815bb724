"""Assemble a fine-tuning run from a checked config, in one documented order.

`build_run` is what every fine-tuning recipe calls; read it top to bottom to see what happens
before the first step:

 1. the process: torchrun peers, device, dtype, the resume point, the seed
 2. the tokenizer, then the model on the meta device with its adapters (the builder applies them)
 3. weights streamed in (NF4 for QLoRA), adapters initialised, only the trained part trainable
 4. model transformations: activation checkpointing, compile, FSDP2 (written once, any family)
 5. data: datasets (a list is combined), a token-id check against the model, loaders
 6. optimizer, schedule, loss, metric loggers
 7. on resume: optimizer, schedule, data position, random state and counters restored
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from tunelib.checkpoint import atomic, training_state
from tunelib.config import instantiate
from tunelib.errors import ConfigError
from tunelib.training import runtime
from tunelib.training.distributed import Dist, full_state_dict
from tunelib.training.loggers import JSONLLogger, MetricLoggers
from tunelib.training.loop import Run, TrainState
from tunelib.training.loss import LinearCrossEntropyLoss
from tunelib.training.optim import OptimizerInBackward
from tunelib.training.signals import StopOnSignal

Method = Literal["full", "lora", "adapter"]


@dataclass
class Built:
    """What `build_run` returns: the run, plus what the recipe reports at the end.

    Use it as a context manager around training: on the way out it closes the loggers,
    puts back the signal handlers and leaves the process group, whatever happened.
    """

    run: Run
    checkpointer: object
    stop: StopOnSignal
    resumed_from: atomic.Checkpoint | None

    def __enter__(self) -> "Built":
        return self

    def __exit__(self, *exc) -> None:
        self.run.logger.close()
        self.stop.restore()
        self.run.dist.close()

    def report(self, *, adapter: bool, merged: bool) -> int:
        """Print where the model is and how to load it; return the exit code (128+signal if stopped)."""
        if self.stop.signum is not None:
            return self.stop.exit_code
        if self.run.dist.is_main:
            from tunelib.training.report import final_message

            print(final_message(self.checkpointer.output_dir / "final", self.checkpointer.base_model_name(),
                                adapter=adapter, merged=merged), flush=True)
        return 0


def build_run(cfg, method: Method) -> Built:
    """Build everything `tunelib.training.train` needs from the config of a `method` recipe.

    Raises:
        ConfigError, DataError, CheckpointError: bad input, before any step runs.
    """
    # Rules between settings (batch_size >= 1, optimizer_in_bwd without accumulation) were
    # checked with the config, by the recipe schema's `value_problems`, so `tune validate` sees them too.
    # The checkpointer checks both folders (output_dir must not be inside checkpoint_dir)
    # before output_dir is created, so a refused run leaves nothing behind.
    checkpointer = _checkpointer(cfg)
    _check_output_dir(Path(cfg.output_dir))
    device = runtime.resolve_device(cfg.device, _local_rank())
    dist = Dist.from_env(device, cfg.dist_timeout_seconds)
    dtype = runtime.resolve_dtype(cfg.dtype, device)
    resume = checkpointer.resume_point(cfg.resume_from_checkpoint)
    dist.barrier()  # every rank decided before any writes into output_dir
    saved = None
    if resume is not None and not resume.final:
        saved = training_state.load(resume.path, dist.rank, dist.world_size)
    if resume is not None and resume.final:
        raise ConfigError(f"{resume.path} is the end of a finished run; nothing is left to resume "
                          "(raise epochs and resume from a step_N checkpoint, or choose a new output_dir)")
    seed = runtime.set_seed(saved["counters"]["seed"] if saved else cfg.seed)

    tokenizer = instantiate(cfg.tokenizer)
    model = instantiate(cfg.model, checkpoint_dir=cfg.checkpoint_dir)
    _check_method(model, method)
    checkpointer.load_model(model, dtype=dtype, device=device, resume=resume)
    dist.say(_make_trainable(model, method, device, dtype))
    if resume is not None:
        checkpointer.load_adapter(model, resume)
    _transform(model, cfg, dist, device)
    trainable = [p for p in model.parameters() if p.requires_grad]  # after FSDP2 swapped them for shards

    loader = _loader(cfg, cfg.dataset, tokenizer, model, dist, seed, cfg.batch_size, shuffle=cfg.shuffle)
    val_loader = None
    if cfg.dataset_val is not None:
        val_loader = _loader(cfg, cfg.dataset_val, tokenizer, model, dist, seed,
                             cfg.batch_size_val or cfg.batch_size, shuffle=False)

    optimizer = _optimizer(cfg, trainable)
    state = TrainState(seed=seed)
    stop = StopOnSignal(dist)
    run = Run(model=model, optimizer=optimizer, scheduler=None, loss_fn=_loss(cfg), loader=loader,
              val_loader=val_loader, save=None, logger=None, dist=dist, device=device, settings=cfg,
              state=state, stop_requested=stop.requested, optimizer_in_bwd=isinstance(optimizer, OptimizerInBackward),
              trainable=trainable)
    run.scheduler = _scheduler(cfg, optimizer, run.total_steps)
    run.save = _saver(cfg, checkpointer, method)
    if saved is not None:
        _restore(run, saved, resume)
    run.logger = _logger(cfg, dist, state.step if saved else None)
    _write_config(cfg, dist)
    return Built(run, checkpointer, stop, resume)


# -- 1. the process ------------------------------------------------------------------------


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def _check_output_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".tunelib_write_test_{_local_rank()}_{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"output_dir {out} is not writable: {e.strerror or e}") from None


def _checkpointer(cfg):
    from tunelib.checkpoint.checkpointer import HFCheckpointer

    keep = {} if cfg.keep_last_n_checkpoints is None else {"keep_last_n_checkpoints": cfg.keep_last_n_checkpoints}
    if cfg.checkpointer is None:
        return HFCheckpointer(cfg.checkpoint_dir, cfg.output_dir, **keep)
    if "keep_last_n_checkpoints" in cfg.checkpointer:  # the component's own setting wins
        keep = {}
    return instantiate(cfg.checkpointer, **keep)


# -- 2-4. the model -------------------------------------------------------------------------


def _check_method(model: torch.nn.Module, method: Method) -> None:
    from tunelib.peft import adapter_params, llama_adapter_spec

    has = bool(adapter_params(model))
    if method == "full" and has:
        raise ConfigError("the model config asks for adapters (lora_* or adapter keys) but this recipe trains every "
                          "weight; run lora_finetune_single_device or adapter_finetune_single_device, or remove them")
    if method == "adapter" and llama_adapter_spec(model) is None:
        raise ConfigError("this recipe trains a LLaMA-Adapter but the model config adds none; set model.adapter=v1 "
                          "or v2 (LoRA keys belong to lora_finetune_single_device)")
    if method == "lora" and llama_adapter_spec(model) is not None:
        raise ConfigError("the model config asks for a LLaMA-Adapter (model.adapter) but this recipe trains LoRA; "
                          "run adapter_finetune_single_device, or set model.adapter=null")
    if method != "full" and not has:
        raise ConfigError("this recipe trains adapters but the model config adds none; set e.g. "
                          "model.lora_attn_modules=[q_proj,v_proj] (or run full_finetune_single_device)")


def _make_trainable(model: torch.nn.Module, method: Method, device, dtype) -> str:
    from tunelib.peft import initialize_adapters, set_trainable

    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        initialize_adapters(model, device, dtype)
        set_trainable(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    total = sum(p.numel() for p in model.parameters())
    count = sum(p.numel() for p in trainable)
    return f"Model: {total / 1e6:,.1f}M parameters, {count / 1e6:,.3f}M trainable ({100 * count / total:.2f}%)"


def _transform(model: torch.nn.Module, cfg, dist: Dist, device: torch.device) -> None:
    """Activation checkpointing, compile, FSDP2, in that order (each wraps the decoder layers)."""
    from tunelib.training import transforms

    if cfg.enable_activation_offloading and not cfg.enable_activation_checkpointing:
        raise ConfigError("enable_activation_offloading needs enable_activation_checkpointing=True")
    if cfg.enable_activation_offloading and device.type != "cuda":
        raise ConfigError("enable_activation_offloading moves activations from GPU to CPU memory; it needs device=cuda")
    if cfg.enable_activation_checkpointing:
        transforms.activation_checkpointing(model)
    if cfg.compile:
        transforms.compile_layers(model)
    if dist.enabled:
        transforms.shard(model, cfg, device)


# -- 5. data ---------------------------------------------------------------------------------


def _loader(cfg, node, tokenizer, model, dist: Dist, seed: int, batch_size: int, shuffle: bool):
    from tunelib.data import build_loader, check_token_ids, combine

    nodes = list(node) if isinstance(node, (list, tuple)) or _is_list(node) else [node]
    dataset = combine([instantiate(n, tokenizer) for n in nodes], seed=seed)
    check_token_ids(dataset, model.config.vocab_size)
    return build_loader(dataset, batch_size=batch_size, shuffle=shuffle, seed=seed,
                        rank=dist.rank, world_size=dist.world_size, pad_id=tokenizer.pad_id)


def _is_list(node) -> bool:
    from omegaconf import ListConfig

    return isinstance(node, ListConfig)


# -- 6. optimizer, schedule, loss, loggers ------------------------------------------------------


def _built(node, key: str, *args, **kwargs):
    """Build a torch-side component; its own refusal of a value (torch.optim's "Invalid
    learning rate: -1") becomes a one-line error naming the config key."""
    try:
        return instantiate(node, *args, **kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{key} ({node._component_}) refused its settings: {str(e).splitlines()[0]}") from None


def _optimizer(cfg, trainable: list[torch.nn.Parameter]):
    if getattr(cfg, "optimizer_in_bwd", False):
        return OptimizerInBackward(trainable, lambda params: _built(cfg.optimizer, "optimizer", params))
    return _built(cfg.optimizer, "optimizer", trainable)


def _scheduler(cfg, optimizer, total_steps: int):
    if cfg.lr_scheduler is None:
        return None
    return _built(cfg.lr_scheduler, "lr_scheduler", optimizer, num_training_steps=total_steps)


def _loss(cfg):
    return LinearCrossEntropyLoss() if cfg.loss is None else _built(cfg.loss, "loss")


def _logger(cfg, dist: Dist, resumed_step: int | None) -> MetricLoggers:
    if not dist.is_main:
        return MetricLoggers([])
    node = cfg.metric_logger
    if node is None:
        loggers = [JSONLLogger(cfg.output_dir)]
    else:
        nodes = list(node) if _is_list(node) else [node]
        loggers = [instantiate(n) for n in nodes]
    logger = MetricLoggers(loggers)
    if resumed_step is not None:
        logger.resume(resumed_step)
    from omegaconf import OmegaConf

    logger.log_config(OmegaConf.to_container(cfg))
    return logger


def _write_config(cfg, dist: Dist) -> None:
    if dist.is_main:
        from omegaconf import OmegaConf

        (Path(cfg.output_dir) / "config.yaml").write_text(OmegaConf.to_yaml(cfg))


# -- saving and resuming ----------------------------------------------------------------------


def _saver(cfg, checkpointer, method: Method):
    from omegaconf import OmegaConf

    adapter_only = bool(getattr(cfg, "save_adapter_weights_only", False))
    if method == "adapter":  # LLaMA-Adapter writes a merged folder only when v2 is to be folded
        adapter_only = not cfg.fold_adapter_v2

    def save(run: Run, final: bool) -> Path:
        def extra(folder: Path) -> None:
            if run.dist.is_main:
                (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
            if not final:
                training_state.save(folder, counters=run.state, model=run.model, optimizer=run.optimizer,
                                    scheduler=run.scheduler, loader=run.loader, rng=runtime.rng_state(),
                                    settings_fingerprint=training_state.fingerprint(cfg, run.dist.world_size),
                                    dist=run.dist)

        model = _gathered(cfg, run) if run.dist.enabled else run.model
        folder = checkpointer.save(model, step=run.state.step, final=final, adapter_only=adapter_only,
                                   extra=extra, dist=run.dist)
        run.dist.say(f"Saved {'final model' if final else 'checkpoint'} to {folder}")
        return folder

    return save


def _gathered(cfg, run: Run) -> torch.nn.Module | None:
    """On rank 0, a CPU copy of the sharded model to write out (None elsewhere).

    The copy is built on meta and takes the gathered tensors as they are (assign=True), so
    rank 0 holds the weights once beside its shard, not twice.
    """
    state = full_state_dict(run.model, run.dist)
    if state is None:
        return None
    model = instantiate(cfg.model, checkpoint_dir=cfg.checkpoint_dir)
    # Tied weights arrive as one tensor under both names, so they stay one storage here.
    model.load_state_dict(state, strict=True, assign=True)
    return model


def _restore(run: Run, saved: dict, resume: atomic.Checkpoint) -> None:
    training_state.check_settings(saved["settings"], training_state.fingerprint(run.settings, run.dist.world_size),
                                  resume.path)
    training_state.restore_optimizer(resume.path, saved, run.model, run.optimizer, run.dist)
    if run.scheduler is not None and saved["scheduler"] is not None:
        run.scheduler.load_state_dict(saved["scheduler"])
    run.loader.load_state_dict(saved["loader"])
    runtime.set_rng_state(saved["rng"])
    for key, value in saved["counters"].items():
        setattr(run.state, key, value)
    lr = float(run.optimizer.param_groups[0]["lr"])
    run.dist.say(f"Resuming from {resume.path}: step {run.state.step} of {run.total_steps}, "
                 f"epoch {run.state.epoch + 1} of {run.settings.epochs}, lr {lr:.3g}")
