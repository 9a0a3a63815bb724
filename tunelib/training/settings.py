"""The settings every fine-tuning recipe shares: the one typed, documented home of their defaults.

A recipe's `SCHEMA` is `FullSettings`, `LoRASettings` or `AdapterSettings`; config keys
outside these are refused before anything runs (see docs/configs.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tunelib.config.rules import device_problems, folder_problems, seed_problems
from tunelib.config.schema import REQUIRED, Component, component, setting


@dataclass(kw_only=True)
class TrainingSettings:
    """Keys of a fine-tuning config (torchtune's names, so existing command lines work)."""

    output_dir: str = setting(REQUIRED, "Folder for checkpoints, logs and the final model.")
    checkpoint_dir: str = setting(REQUIRED, "The Hugging Face model folder to start from (`tune download` writes /tmp/<model name>).")
    model: Component = component("Model builder, e.g. tunelib.models.llama3_1.llama3_1_8b.", provided=("checkpoint_dir",))
    tokenizer: Component = component("Tokenizer builder, e.g. tunelib.tokenizers.from_pretrained.")
    checkpointer: Component | None = component("How weights are read and written (default: tunelib.checkpoint.HFCheckpointer from checkpoint_dir to output_dir).", default=None)
    resume_from_checkpoint: bool | str = setting(False, "True: continue from the newest complete checkpoint in output_dir; or the path of one.")
    dataset: Component | list[Component] = component("Training data builder(s); a list is concatenated.", provided=("*1",))
    dataset_val: Component | list[Component] | None = component("Validation data builder(s); None for no validation.", default=None, provided=("*1",))
    run_val_every_n_steps: int | None = setting(None, "Compute validation loss every N optimizer steps (and at the end).")
    batch_size_val: int | None = setting(None, "Validation batch size (default: batch_size).")
    seed: int | None = setting(None, "Random seed; None picks one and records it, so a resumed run is still exact.")
    shuffle: bool = setting(True, "Shuffle the training data each epoch.")
    batch_size: int = setting(2, "Sequences (or packs) per micro-batch on each device.")
    epochs: int = setting(1, "Passes over the training data.")
    max_steps_per_epoch: int | None = setting(None, "Stop an epoch after this many optimizer steps.")
    gradient_accumulation_steps: int = setting(1, "Micro-batches per optimizer step; the loss is normalised by their total token count.")
    optimizer: Component = component("Optimizer, e.g. torch.optim.AdamW or torchao's low-bit AdamW.", provided=("*1",))
    lr_scheduler: Component | None = component("Learning-rate schedule, e.g. tunelib.training.get_cosine_schedule_with_warmup.", default=None, provided=("*1", "num_training_steps"))
    loss: Component | None = component("Loss (default: tunelib.training.LinearCrossEntropyLoss, which never materialises all logits).", default=None)
    clip_grad_norm: float | None = setting(None, "Clip the gradient norm to this value; None only measures it.")
    compile: bool = setting(False, "torch.compile each decoder layer and the loss.")
    device: str = setting("auto", "cuda, cpu, cuda:N or auto (cuda when available).")
    cpu_threads: int | None = setting(None, "Threads for work on the CPU (None: torch's default, one per core); 1 is often faster for tiny models.")
    dtype: Literal["fp32", "bf16"] = setting("bf16", "Precision of weights and compute (fp16 is not supported).")
    enable_activation_checkpointing: bool = setting(False, "Recompute each decoder layer's activations in backward to save memory.")
    enable_activation_offloading: bool = setting(False, "Keep each layer's saved input in pinned CPU memory until backward, copied on a side stream (CUDA only; needs activation checkpointing; not yet measured on a GPU).")
    metric_logger: Component | list[Component] | None = component("Metric logger(s) besides output_dir/metrics.jsonl, which is always written (e.g. tunelib.training.TensorBoardLogger).", default=None)
    log_every_n_steps: int = setting(1, "Log metrics every N optimizer steps.")
    log_peak_memory_stats: bool = setting(True, "Log peak memory with the metrics.")
    save_every_n_steps: int | None = setting(None, "Write a checkpoint every N optimizer steps (the final one is always written).")
    keep_last_n_checkpoints: int | None = setting(None, "Keep only the newest N step checkpoints (never the newest complete one).")
    on_nonfinite: Literal["raise", "skip"] = setting("raise", "A NaN/inf loss or gradient: stop with a message, or skip the step.")
    max_nonfinite_skips: int = setting(10, "With on_nonfinite=skip, stop after this many skipped steps in a row.")
    fsdp_cpu_offload: bool = setting(False, "Distributed: keep parameters and optimizer state in CPU memory.")
    fsdp_reshard_after_forward: bool = setting(True, "Distributed: free gathered parameters after forward (less memory, more communication).")
    fsdp_gradient_sync: Literal["last_micro_batch", "every_micro_batch"] = setting("last_micro_batch", "Distributed, with gradient accumulation: reduce gradients once per step (every rank holds the trained weights' whole fp32 gradients in between: small for LoRA, 4 bytes a weight for full fine-tuning) or after every micro-batch (they stay sharded; HSDP still all-reduces across replicas once per step).")
    data_parallel_shard_dim: int = setting(-1, "Distributed: processes that share one sharded copy of the model (-1: the world size / data_parallel_replicate_dim).")
    data_parallel_replicate_dim: int = setting(1, "Distributed: copies of the sharded model (HSDP, e.g. one per node); times data_parallel_shard_dim it must equal the world size.")
    dist_timeout_seconds: int = setting(600, "Distributed: a rank that waits longer than this for the others ends the job.")

    @classmethod
    def value_problems(cls, cfg: dict) -> list[str]:
        """Rules on values that types cannot say. The config checks call this (after the types
        passed), so `tune validate` refuses what `tune run` would."""
        problems = []
        for key in ("batch_size", "epochs", "gradient_accumulation_steps", "log_every_n_steps"):
            if cfg.get(key) is not None and cfg[key] < 1:
                problems.append(f"{key}={cfg[key]}; it must be 1 or more")
        for key in ("max_steps_per_epoch", "save_every_n_steps", "run_val_every_n_steps", "batch_size_val", "cpu_threads"):
            if cfg.get(key) is not None and cfg[key] < 1:
                problems.append(f"{key}={cfg[key]}; it must be 1 or more, or null")
        problems += _mesh_problems(cfg)
        if cfg.get("clip_grad_norm") is not None and cfg["clip_grad_norm"] <= 0:
            problems.append(f"clip_grad_norm={cfg['clip_grad_norm']}; use a positive number, or null")
        problems += seed_problems(cfg) + device_problems(cfg) + folder_problems(cfg, "output_dir", "checkpoint_dir")
        return problems + _warmup_problems(cfg.get("lr_scheduler"))


def _mesh_problems(cfg: dict) -> list[str]:
    # The world size is known only under torchrun, so the product is checked when sharding.
    problems = []
    shard, replicate = cfg.get("data_parallel_shard_dim"), cfg.get("data_parallel_replicate_dim")
    if shard is not None and shard != -1 and shard < 1:
        problems.append(f"data_parallel_shard_dim={shard}; use 1 or more, or -1 for the rest of the world size")
    if replicate is not None and replicate < 1:
        problems.append(f"data_parallel_replicate_dim={replicate}; use 1 or more (1: no replicas, plain FSDP)")
    return problems


def _warmup_problems(scheduler) -> list[str]:
    # Every shipped schedule takes num_warmup_steps; a negative one would keep the lr at 0 or
    # above its peak without a word.
    warmup = scheduler.get("num_warmup_steps") if isinstance(scheduler, dict) else None
    if isinstance(warmup, (int, float)) and not isinstance(warmup, bool) and warmup < 0:
        return [f"lr_scheduler.num_warmup_steps={warmup}; use 0 or more"]
    return []


@dataclass(kw_only=True)
class FullSettings(TrainingSettings):
    """Full fine-tuning: every weight trains."""

    optimizer_in_bwd: bool = setting(False, "Step each parameter as soon as its gradient is ready (saves gradient memory; no accumulation or clipping).")

    @classmethod
    def value_problems(cls, cfg: dict) -> list[str]:
        problems = super().value_problems(cfg)
        accumulates = (cfg.get("gradient_accumulation_steps") or 1) > 1
        if cfg.get("optimizer_in_bwd") and (accumulates or cfg.get("clip_grad_norm")):
            problems.append("optimizer_in_bwd steps each weight inside backward, so it cannot accumulate gradients "
                            "or clip them; set gradient_accumulation_steps=1 and clip_grad_norm=null")
        return problems


@dataclass(kw_only=True)
class LoRASettings(TrainingSettings):
    """LoRA, DoRA and QLoRA: only adapter weights train."""

    save_adapter_weights_only: bool = setting(False, "Write only the PEFT adapter folder, not the merged model.")


@dataclass(kw_only=True)
class AdapterSettings(TrainingSettings):
    """LLaMA-Adapter v1 and v2: prompts and gates train (v2 also scales, biases and norms); base weights stay frozen."""

    fold_adapter_v2: bool = setting(False, "v2 only: also write merged/, an HF model folder with the scales and biases folded into the linear weights; prompts cannot be folded and are left out, so it equals the adapter model only without prompts.")

    @classmethod
    def value_problems(cls, cfg: dict) -> list[str]:
        problems = super().value_problems(cfg)
        model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
        if cfg.get("fold_adapter_v2") and model.get("adapter") != "v2":
            problems.append("fold_adapter_v2=True needs model.adapter=v2: v1 learns only prompts, which cannot "
                            "be folded into weights; set fold_adapter_v2=False")
        return problems
