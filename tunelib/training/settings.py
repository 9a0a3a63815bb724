"""The settings every fine-tuning recipe shares: the one typed, documented home of their defaults.

A recipe's `SCHEMA` is `FullSettings`, `LoRASettings` or `AdapterSettings`; config keys
outside these are refused before anything runs (see docs/configs.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from tunelib.config.rules import checkpointer_folder_problems, device_problems, folder_problems, seed_problems
from tunelib.config.schema import REQUIRED, Component, component, setting
from tunelib.models import flex


@dataclass(kw_only=True)
class TrainingSettings:
    """Keys of a fine-tuning config (torchtune's names, so existing command lines work)."""

    output_dir: str = setting(REQUIRED, "Folder for checkpoints, logs and the final model.")
    checkpoint_dir: str = setting(REQUIRED, "The Hugging Face model folder to start from (`tune download` writes /tmp/<model name>).")
    model: Component = component("Model builder, e.g. tunelib.models.llama3_1.llama3_1_8b.", provided=("checkpoint_dir",))
    tokenizer: Component = component("Tokenizer builder, e.g. tunelib.tokenizers.from_pretrained.")
    checkpointer: Component | None = component("How weights are read and written (default: tunelib.training.HFCheckpointer from checkpoint_dir to output_dir).", default=None)
    resume_from_checkpoint: bool | str = setting(False, "True: continue from the newest complete checkpoint in output_dir; or the path of one.")
    dataset: Component | list[Component] = component("Training data builder(s); a list is concatenated.", provided=("*1",))
    dataset_val: Component | list[Component] | None = component("Validation data builder(s); None for no validation.", default=None, provided=("*1",))
    run_val_every_n_steps: int | None = setting(None, "Compute validation loss every N optimizer steps (and at the end).")
    batch_size_val: int | None = setting(None, "Validation batch size (default: batch_size).")
    seed: int | None = setting(None, "Random seed; None picks one and records it, so a resumed run is still exact.")
    shuffle: bool = setting(True, "Shuffle the training data each epoch.")
    num_workers: int = setting(0, "Processes that build batches beside training (torch DataLoader's num_workers; 0: the training process does); resume stays exact.")
    pin_memory: bool | Literal["auto"] = setting("auto", "Build batches in page-locked memory so copies to the GPU run beside compute (auto: on for CUDA; CPU runs have nothing to pin).")
    batch_size: int = setting(2, "Sequences (or packs) per micro-batch on each device.")
    pad_to_multiple_of: int | None = setting(None, "Pad each unpacked batch to a multiple of this many tokens (e.g. 64), so lengths come from a small set (fewer shapes for torch.compile and GPU kernels); None: to its longest sample. Packs are always their full length.")
    epochs: int = setting(1, "Passes over the training data.")
    max_steps_per_epoch: int | None = setting(None, "Stop an epoch after this many optimizer steps.")
    gradient_accumulation_steps: int = setting(1, "Micro-batches per optimizer step; the loss is normalised by their total token count.")
    optimizer: Component = component("Optimizer, e.g. torch.optim.AdamW or torchao's low-bit AdamW.", provided=("*1",))
    lr_scheduler: Component | None = component("Learning-rate schedule, e.g. tunelib.training.get_cosine_schedule_with_warmup.", default=None, provided=("*1", "num_training_steps"))
    loss: Component | None = component("Loss (default: tunelib.training.LinearCrossEntropyLoss, which never materialises all logits).", default=None)
    clip_grad_norm: float | None = setting(None, "Clip the gradient norm to this value; None only measures it.")
    compile: bool = setting(False, "torch.compile each decoder layer as one whole graph, and the loss's per-chunk cross-entropy (the built-in loss with a plain output layer).")
    attention_backend: Literal["auto", "sdpa", "flex"] = setting("auto", "Attention kernels: auto, the fastest exact one here (flex attention on CUDA for packed documents, sliding windows and soft-capping, SDPA otherwise; on CPU, SDPA and packed documents one at a time); sdpa, SDPA with a dense mask where one is needed; flex, torch's flex_attention for every layer (needs a torch that trains with it on the device).")
    device: str = setting("auto", "cuda, cpu, cuda:N or auto (cuda when available).")
    cpu_threads: int | None = setting(None, "Threads for work on the CPU (None: torch's default, one per core); 1 is often faster for tiny models.")
    dtype: Literal["fp32", "bf16"] = setting("bf16", "Precision of weights and compute (fp16 is not supported).")
    enable_activation_checkpointing: bool = setting(False, "Recompute each decoder layer's activations in backward to save memory.")
    ac_mode: Literal["full", "selective"] = setting("full", "With activation checkpointing, which decoder layers recompute: full, every one; selective, every ac_option-th (torchtune's keys).")
    ac_option: int | None = setting(None, "With ac_mode=selective: checkpoint every k-th decoder layer (layers k, 2k, ... counted from 1; 1 is every layer).")
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
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] | None = setting(None, "Level of tunelib's log lines on the first process (the dataset's report, packing): WARNING keeps warnings and errors, ERROR only errors; None: INFO (torchtune's key).")
    profiler: Component | None = component("torch.profiler around training, writing Chrome traces when its enabled is true: tunelib.training.setup_torch_profiler (torchtune's node and keys; see docs/configs.md).", default=None)
    low_cpu_ram: bool = setting(False, "torchtune's key for loading with little CPU memory; tunelib always does (weights stream tensor by tensor into the model's own memory, never a second copy), so both values load that way.")
    custom_sharded_layers: list[str] | None = setting(None, "torchtune's key: modules FSDP2 shards as units of their own besides each decoder layer; tunelib always does so for an untied embedding and output layer (a tied pair is one weight, kept with the root), the only names accepted (torchtune's tok_embeddings, output; tunelib's embed_tokens, lm_head).")

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
        problems += _mesh_problems(cfg) + _checkpointing_problems(cfg) + _loader_problems(cfg)
        problems += _attention_problems(cfg)
        if cfg.get("pad_to_multiple_of") is not None and cfg["pad_to_multiple_of"] < 1:
            problems.append(f"pad_to_multiple_of={cfg['pad_to_multiple_of']}; it must be 1 or more, or null")
        if cfg.get("clip_grad_norm") is not None and cfg["clip_grad_norm"] <= 0:
            problems.append(f"clip_grad_norm={cfg['clip_grad_norm']}; use a positive number, or null")
        problems += seed_problems(cfg) + device_problems(cfg) + folder_problems(cfg, "output_dir", "checkpoint_dir")
        problems += checkpointer_folder_problems(cfg, "checkpoint_dir", "output_dir") + _sharded_layer_problems(cfg)
        return problems + _warmup_problems(cfg.get("lr_scheduler"))


# The setting of LoRASettings and AdapterSettings (PEFT's autocast_adapter_dtype, as a dtype).
ADAPTER_DTYPE_DOC = ("Precision the trained adapter weights are stored, stepped and saved in (LoRA A/B, DoRA magnitudes; "
                     "LLaMA-Adapter prompts, gates, v2 scales, biases and norms): fp32 on a bf16 base, as PEFT keeps "
                     "them, or bf16 (dtype=bf16 only) for the training dtype throughout.")
# torchao's Adam family takes `bf16_stochastic_round` (AdamW8bit, AdamW4bit, AdamWFp8 and their
# Adam twins; its 16-bit AdamW is private in torchao 0.18, which a config cannot name).
_TORCHAO_OPTIM = "torchao.optim."


def _given(cfg: dict, schema: type, key: str):
    """The config's value of `key`, or the schema's default when the config leaves it out."""
    return cfg[key] if key in cfg else schema.__dataclass_fields__[key].default


def _adapter_dtype_problems(cfg: dict, schema: type) -> list[str]:
    if _given(cfg, schema, "adapter_dtype") == "bf16" and _given(cfg, schema, "dtype") == "fp32":
        return ["adapter_dtype=bf16 with dtype=fp32 would store the adapters coarser than the model; "
                "set adapter_dtype=fp32 (or dtype=bf16)"]
    return []


def _weight_precision_problems(cfg: dict, schema: type) -> list[str]:
    choice, dtype = _given(cfg, schema, "weight_precision"), _given(cfg, schema, "dtype")
    optimizer = cfg.get("optimizer") if isinstance(cfg.get("optimizer"), dict) else {}
    if "bf16_stochastic_round" in optimizer:
        return ["optimizer.bf16_stochastic_round is set by weight_precision: remove it and set "
                "weight_precision=stochastic_rounding (or dtype)"]
    if choice == "dtype":
        return []
    if dtype != "bf16":
        return [f"weight_precision={choice} changes how bf16 weights are kept, but dtype={dtype} stores "
                "every weight in fp32 already; set dtype=bf16 or weight_precision=dtype"]
    name = str(optimizer.get("_component_", ""))
    if choice == "stochastic_rounding" and not (name.startswith(_TORCHAO_OPTIM) and "Adam" in name):
        return [f"weight_precision=stochastic_rounding needs one of torchao's Adam optimizers (they take "
                f"bf16_stochastic_round), not {name or 'this optimizer'}; set e.g. "
                "optimizer._component_=torchao.optim.AdamW8bit (the shipped *_full configs' optimizer)"]
    return []


# custom_sharded_layers names (torchtune's and tunelib's) of the modules FSDP2 always shards on their own.
SHARDED_ON_THEIR_OWN = ("tok_embeddings", "output", "embed_tokens", "lm_head", "model.embed_tokens")


def _sharded_layer_problems(cfg: dict) -> list[str]:
    unknown = [name for name in cfg.get("custom_sharded_layers") or [] if name not in SHARDED_ON_THEIR_OWN]
    if not unknown:
        return []
    return [f"custom_sharded_layers names {', '.join(unknown)}; only the embedding and the output layer can be "
            f"units of their own ({', '.join(SHARDED_ON_THEIR_OWN[:4])}), and they always are"]


def _checkpointing_problems(cfg: dict) -> list[str]:
    mode, every = cfg.get("ac_mode", "full"), cfg.get("ac_option")
    if mode == "selective" and not cfg.get("enable_activation_checkpointing"):
        return ["ac_mode=selective chooses which layers activation checkpointing recomputes, but "
                "enable_activation_checkpointing is False; set enable_activation_checkpointing=True"]
    if mode == "selective" and every is None:
        return ["ac_mode=selective needs ac_option=k, to checkpoint every k-th decoder layer"]
    if every is not None and mode != "selective":
        return [f"ac_option={every} is read only with ac_mode=selective; set ac_mode=selective or remove ac_option"]
    if every is not None and every < 1:
        return [f"ac_option={every}; use 1 or more (checkpoint every k-th decoder layer)"]
    return []


def _loader_problems(cfg: dict) -> list[str]:
    problems = []
    if cfg.get("num_workers") is not None and cfg["num_workers"] < 0:
        problems.append(f"num_workers={cfg['num_workers']}; use 0 or more")
    if cfg.get("pin_memory") is True and str(cfg.get("device", "")).startswith("cpu"):
        problems.append("pin_memory=True speeds up copies to a GPU, but device is cpu; set pin_memory=auto")
    return problems


def _attention_problems(cfg: dict) -> list[str]:
    if cfg.get("attention_backend") != "flex":
        return []
    device = str(cfg.get("device") or "auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    problem = flex.backward_problem(device.split(":")[0])
    return [] if problem is None else [f"attention_backend=flex: {problem}; use attention_backend=auto or sdpa"]


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
    weight_precision: Literal["dtype", "fp32_master", "stochastic_rounding"] = setting("dtype", "With dtype=bf16: dtype keeps weights and optimizer state in bf16, each update rounded to nearest; fp32_master stores weights, gradients and optimizer state in fp32 and computes in bf16 (autocast on one device, FSDP2's param_dtype under torchrun; the saved model is fp32); stochastic_rounding keeps bf16 weights and has torchao's Adam/AdamW round each update stochastically (bf16_stochastic_round). Bytes per weight in docs/methods.md.")

    @classmethod
    def value_problems(cls, cfg: dict) -> list[str]:
        problems = super().value_problems(cfg)
        accumulates = (cfg.get("gradient_accumulation_steps") or 1) > 1
        if cfg.get("optimizer_in_bwd") and (accumulates or cfg.get("clip_grad_norm")):
            problems.append("optimizer_in_bwd steps each weight inside backward, so it cannot accumulate gradients "
                            "or clip them; set gradient_accumulation_steps=1 and clip_grad_norm=null")
        return problems + _weight_precision_problems(cfg, cls)


@dataclass(kw_only=True)
class LoRASettings(TrainingSettings):
    """LoRA, DoRA and QLoRA: only adapter weights train."""

    save_adapter_weights_only: bool = setting(False, "Write only the PEFT adapter folder, not the merged model.")
    adapter_dtype: Literal["fp32", "bf16"] = setting("fp32", ADAPTER_DTYPE_DOC)

    @classmethod
    def value_problems(cls, cfg: dict) -> list[str]:
        return super().value_problems(cfg) + _adapter_dtype_problems(cfg, cls)


@dataclass(kw_only=True)
class AdapterSettings(TrainingSettings):
    """LLaMA-Adapter v1 and v2: prompts and gates train (v2 also scales, biases and norms); base weights stay frozen."""

    fold_adapter_v2: bool = setting(False, "v2 only: also write merged/, an HF model folder with the scales and biases folded into the linear weights; prompts cannot be folded and are left out, so it equals the adapter model only without prompts.")
    adapter_dtype: Literal["fp32", "bf16"] = setting("fp32", ADAPTER_DTYPE_DOC)

    @classmethod
    def value_problems(cls, cfg: dict) -> list[str]:
        problems = super().value_problems(cfg)
        model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
        if cfg.get("fold_adapter_v2") and model.get("adapter") != "v2":
            problems.append("fold_adapter_v2=True needs model.adapter=v2: v1 learns only prompts, which cannot "
                            "be folded into weights; set fold_adapter_v2=False")
        return problems + _adapter_dtype_problems(cfg, cls)


# The settings of quantization-aware training, added to full and LoRA fine-tuning (torchtune's keys).
QUANTIZER_DOC = ("What the model will be quantized to, which training simulates (fake quantization of the "
                 "linears inside decoder layers): tunelib.quantization.Int8DynActInt4WeightQATQuantizer or "
                 "Int4WeightOnlyQATQuantizer (torchtune's torchtune.training.quantization names too) with its "
                 "groupsize; `tune run quantize` with the same quantizer writes that quantization.")
FAKE_QUANT_AFTER_DOC = ("Train this many optimizer steps with plain numbers before fake quantization starts "
                        "(null: from the first step).")


def _fake_quant_problems(cfg: dict) -> list[str]:
    after = cfg.get("fake_quant_after_n_steps")
    if after is not None and after < 0:
        return [f"fake_quant_after_n_steps={after}; use 0 or more, or null (fake quantization from the first step)"]
    return []


@dataclass(kw_only=True)
class QATSettings(FullSettings):
    """Quantization-aware full fine-tuning: every weight trains through fake quantization."""

    quantizer: Component = component(QUANTIZER_DOC)
    fake_quant_after_n_steps: int | None = setting(None, FAKE_QUANT_AFTER_DOC)

    @classmethod
    def value_problems(cls, cfg: dict) -> list[str]:
        return super().value_problems(cfg) + _fake_quant_problems(cfg)


@dataclass(kw_only=True)
class QATLoRASettings(LoRASettings):
    """Quantization-aware LoRA: adapters train on a frozen base whose linears are fake-quantized."""

    quantizer: Component = component(QUANTIZER_DOC)
    fake_quant_after_n_steps: int | None = setting(None, FAKE_QUANT_AFTER_DOC)

    @classmethod
    def value_problems(cls, cfg: dict) -> list[str]:
        return super().value_problems(cfg) + _fake_quant_problems(cfg)


PREFERENCE_LOSS_DOC = ("Preference loss: tunelib.training.DPOLoss (the default, beta 0.1), IPOLoss, HingeLoss, or the "
                       "reference-free SimPOLoss and ORPOLoss (torchtune's torchtune.rlhf.loss.DPOLoss and RSOLoss work too).")
PRECOMPUTE_DOC = ("Work out the reference model's log-probs of every training pair once, before the first step, and keep "
                  "them in output_dir/reference_log_probs.pt (a resume reads them): full fine-tuning then holds one model, "
                  "not two; with adapters the reference costs no memory anyway, so this only saves its forward passes.")


def _preference_problems(cfg: dict) -> list[str]:
    if cfg.get("precompute_reference_log_probs") and cfg.get("dataset_val") is not None:
        return ["precompute_reference_log_probs covers the training pairs only; remove dataset_val or set "
                "precompute_reference_log_probs=False"]
    return []


@dataclass(kw_only=True)
class LoRAPreferenceSettings(LoRASettings):
    """DPO and its relatives with LoRA/DoRA/QLoRA adapters; the base with adapters off is the reference."""

    loss: Component | None = component(PREFERENCE_LOSS_DOC, default=None)
    precompute_reference_log_probs: bool = setting(False, PRECOMPUTE_DOC)

    @classmethod
    def value_problems(cls, cfg: dict) -> list[str]:
        return super().value_problems(cfg) + _preference_problems(cfg)


@dataclass(kw_only=True)
class FullPreferenceSettings(FullSettings):
    """DPO and its relatives on every weight; a frozen copy of the starting weights (or its precomputed
    log-probs) is the reference."""

    loss: Component | None = component(PREFERENCE_LOSS_DOC, default=None)
    precompute_reference_log_probs: bool = setting(False, PRECOMPUTE_DOC)
    reference_checkpoint_dir: str | None = setting(None, "The reference model's Hugging Face folder, when it is not checkpoint_dir (e.g. the model before its SFT); same architecture.")
    ref_checkpointer: Component | None = component("torchtune's key: only its checkpoint_dir is read (the reference model's folder, as reference_checkpoint_dir).", default=None)

    @classmethod
    def value_problems(cls, cfg: dict) -> list[str]:
        return super().value_problems(cfg) + _preference_problems(cfg)


@dataclass(kw_only=True)
class DistillationSettings(LoRASettings):
    """Knowledge distillation: a student (LoRA/DoRA adapters, or every weight when the model node has no
    adapter keys) learns from a frozen teacher of the same vocabulary."""

    loss: Component | None = component("Cross-entropy on the labels (default: tunelib.training.LinearCrossEntropyLoss; torchtune's CEWithChunkedOutputLoss works too).", default=None)
    teacher_model: Component = component("The teacher's model builder, e.g. tunelib.models.qwen2.qwen2_1_5b (no adapter keys: it stays frozen).", provided=("checkpoint_dir",))
    teacher_checkpoint_dir: str | None = setting(None, "The teacher's Hugging Face folder (or torchtune's teacher_checkpointer.checkpoint_dir).")
    teacher_checkpointer: Component | None = component("torchtune's key: only its checkpoint_dir is read (the teacher's folder); other keys are torchtune's file lists, which tunelib reads from the folder itself.", default=None)
    kd_loss: Component | None = component("The divergence from the teacher: tunelib.training.ForwardKLLoss (default), ReverseKLLoss, SymmetricKLLoss, JSDLoss (torchtune's *KLWithChunkedOutputLoss names work too).", default=None)
    kd_ratio: float = setting(0.5, "The divergence's share of the loss: (1 - kd_ratio) * cross-entropy + kd_ratio * divergence.")

    @classmethod
    def value_problems(cls, cfg: dict) -> list[str]:
        problems = super().value_problems(cfg)
        ratio = cfg.get("kd_ratio")
        if isinstance(ratio, (int, float)) and not 0 <= ratio <= 1:
            problems.append(f"kd_ratio={ratio}; use a share between 0 and 1")
        if cfg.get("teacher_checkpoint_dir") is None and not (cfg.get("teacher_checkpointer") or {}).get("checkpoint_dir"):
            problems.append("distillation needs the teacher's weights: set teacher_checkpoint_dir=FOLDER")
        return problems
