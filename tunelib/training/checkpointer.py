"""The checkpointer a fine-tuning config names: HF folder in, HF or PEFT folders out.

    checkpointer:
      _component_: tunelib.training.HFCheckpointer
      checkpoint_dir: ${checkpoint_dir}
      output_dir: ${output_dir}

Layout of `output_dir` (each checkpoint folder complete or absent, see `atomic`):

    step_100/            every save_every_n_steps; training_state.pt makes it resumable
    final/               the end of training, with its training_state.pt (a longer run goes on from it)
       (full)            config.json, model*.safetensors, tokenizer files: an HF model folder
       (LoRA/DoRA)       adapter/ (PEFT: adapter_config.json, adapter_model.safetensors)
                         merged/  (an HF model folder with the adapter merged in)
       (LLaMA-Adapter)   adapter/ (tunelib_llama_adapter.json + .safetensors), and for v2 with
                         fold_adapter_v2 merged/ (scales and biases folded; prompts cannot be)
    config.yaml, metrics.jsonl
    .tunelib.lock        only while a run writes here: one run at a time (see `lock`)
    abandoned/<time>/    checkpoints that came after the one a resume named, moved aside (see set_aside_after)

The merged model is a separate folder because transformers applies an adapter it finds
beside the weights, which would add it twice. Nothing here branches on the model family:
the family's HF format (fused projections, tied embeddings) comes with the model config.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import torch

from tunelib.checkpoint import atomic, torchtune_keys, training_state
from tunelib.checkpoint.hf_load import load_hf_weights
from tunelib.checkpoint.hf_save import save_hf_weights
from tunelib.checkpoint.writes import write_failure
from tunelib.dtensors import whole_params
from tunelib.errors import CheckpointError, ConfigError, TrainingStopped
from tunelib.models.registry import format_for
from tunelib.peft import (
    adapter_params,
    is_adapter_key,
    llama_adapter_spec,
    load_llama_adapter,
    load_peft_adapter,
    merged_weights,
    nf4_transform,
    save_llama_adapter,
    save_peft_adapter,
)

ADAPTER, MERGED = "adapter", "merged"


class HFCheckpointer:
    """Read the base model from `checkpoint_dir`; write checkpoints into `output_dir`.

    Args:
        checkpoint_dir: a Hugging Face model folder (config.json, safetensors, tokenizer).
        output_dir: where checkpoints go; it must not be inside checkpoint_dir.
        max_shard_size: largest safetensors file written, e.g. "5GB".
        keep_last_n_checkpoints: keep only the newest N `step_*` folders (None keeps all).
        checkpoint_files: torchtune's key: the folder's weight files, as a list or as
            `{filename_format, max_filename}`; checked to be exactly the files its index names.
        model_type: torchtune's key (LLAMA3, QWEN2, ...); checked against config.json.
        recipe_checkpoint, adapter_checkpoint: torchtune's keys: with resume_from_checkpoint=True,
            the checkpoint to resume from (a step_N folder of output_dir, or a file in it).
    """
    def __init__(self, checkpoint_dir: str, output_dir: str, max_shard_size: str | int = "5GB",
                 keep_last_n_checkpoints: int | None = None, checkpoint_files: list[str] | dict | None = None,
                 model_type: str | None = None, recipe_checkpoint: str | None = None,
                 adapter_checkpoint: str | None = None):
        self.checkpoint_dir, self.output_dir = Path(checkpoint_dir), Path(output_dir)
        self.max_shard_size, self.keep_last_n = max_shard_size, keep_last_n_checkpoints
        self.resume_keys = {"recipe_checkpoint": recipe_checkpoint, "adapter_checkpoint": adapter_checkpoint}
        if not self.checkpoint_dir.is_dir():
            # Checked first: the tokenizer path and model config derive from it, and their own
            # "does not exist" would not say which setting is wrong.
            what = "is not a folder" if self.checkpoint_dir.exists() else "does not exist"
            raise CheckpointError(f"checkpoint_dir {checkpoint_dir} {what}; download the model into it with "
                                  f"`tune download REPO_ID --output-dir {checkpoint_dir}`, or set checkpoint_dir "
                                  "to the model's folder")
        if keep_last_n_checkpoints is not None and keep_last_n_checkpoints < 1:
            raise ConfigError(f"keep_last_n_checkpoints={keep_last_n_checkpoints}; use 1 or more, or null")
        if self.output_dir.resolve().is_relative_to(self.checkpoint_dir.resolve()):
            raise ConfigError(f"output_dir {output_dir} is inside checkpoint_dir {checkpoint_dir}; "
                              "choose another output_dir so the model you start from is never overwritten")
        if checkpoint_files is not None:
            torchtune_keys.check_checkpoint_files(self.checkpoint_dir, checkpoint_files)
        if model_type is not None:
            torchtune_keys.check_model_type(self.checkpoint_dir, model_type)

    # -- reading ---------------------------------------------------------------------------

    def load_model(self, model: torch.nn.Module, *, dtype: torch.dtype, device: torch.device,
                   resume: atomic.Checkpoint | None = None, buffer_device: torch.device | None = None) -> None:
        """Stream weights into a meta-built model: the base from checkpoint_dir (NF4 where QLoRA
        asks for it), or, when resuming full fine-tuning, the checkpoint's own weights.

        Adapters are left on meta for `tunelib.peft.initialize_adapters`; `load_adapter` then
        puts a resumed run's trained adapter in place.
        """

        folder = resume.path if resume is not None and not adapter_params(model) else self.checkpoint_dir
        load_hf_weights(model, folder, dtype=dtype, device=device, buffer_device=buffer_device,
                        transform=nf4_transform(model), ignore_missing=is_adapter_key)

    def load_adapter(self, model: torch.nn.Module, checkpoint: atomic.Checkpoint) -> None:
        """Put the trained adapter of `checkpoint` into an adapter model (no-op for full fine-tuning)."""

        if llama_adapter_spec(model) is not None:
            load_llama_adapter(model, checkpoint.path / ADAPTER)
        elif adapter_params(model):
            load_peft_adapter(model, checkpoint.path / ADAPTER, fused_projections=self._fused(model))

    def base_model_name(self) -> str:
        """The Hub id `tune download` recorded, else the folder's absolute path (for adapter_config.json)."""
        recorded = self.checkpoint_dir / "original_repo_id.json"
        if recorded.is_file():
            try:
                return json.loads(recorded.read_text())["repo_id"]
            except (ValueError, KeyError):
                pass
        return str(self.checkpoint_dir.resolve())

    # -- writing ---------------------------------------------------------------------------

    def save(self, model: torch.nn.Module | None, *, step: int, final: bool, adapter_only: bool = False,
             extra: Callable[[Path], None] | None = None, dist=None) -> Path:
        """Write a complete checkpoint folder (`final` or `step_<step>`) and return its path.

        `model` is written as an HF or PEFT folder (None: no weights). Under torchrun every rank
        calls this with its sharded model: the weights are gathered piece by piece and rank 0
        writes them, so no rank ever holds the whole model. `extra(folder)` writes more files
        into it, on every rank, before it is marked complete (the training state, the config).

        Raises:
            TrainingStopped: the folder cannot be written (full disk, permissions); the
                previous checkpoint is untouched.
        """
        folder = self.output_dir / ("final" if final else f"step_{step}")
        try:
            with atomic.atomic_folder(folder, step=step, is_final=final, dist=dist) as tmp:
                if model is not None:
                    self._write_model(model, tmp, adapter_only, dist)
                if extra is not None:
                    extra(tmp)
        except BaseException as e:  # noqa: BLE001 - only a failed write is told here; the rest is re-raised
            cause = write_failure(e)
            if cause is None:
                raise
            previous = atomic.complete_checkpoints(self.output_dir)
            kept = (f"; {previous[-1].path} is intact: fix the cause (free space, permissions), then rerun with "
                    "resume_from_checkpoint=True" if previous else "")
            raise TrainingStopped(f"cannot write checkpoint {folder}: {cause.strerror or cause}{kept}") from None
        if not final and (dist is None or dist.is_main):
            atomic.prune(self.output_dir, self.keep_last_n)
        return folder

    def _write_model(self, model: torch.nn.Module, folder: Path, adapter_only: bool, dist=None) -> None:
        """The model's folders, written by the first process. Under FSDP2 every process takes
        part: weights are gathered one decoder layer at a time, adapters all at once (small)."""
        writer = dist is None or dist.is_main
        source = self.checkpoint_dir if (self.checkpoint_dir / "config.json").is_file() else None
        if adapter_params(model):
            with whole_params(model, list(adapter_params(model))):
                if writer and llama_adapter_spec(model) is not None:  # tunelib's own format: PEFT has none for it
                    save_llama_adapter(model, folder / ADAPTER, base_model_name_or_path=self.base_model_name())
                elif writer:
                    save_peft_adapter(model, folder / ADAPTER, base_model_name_or_path=self.base_model_name(),
                                      fused_projections=self._fused(model))
            if adapter_only:
                return
            folder = folder / MERGED  # LLaMA-Adapter v2: its scales and biases folded, see merged_weights
        # Without adapters this is the model's own weights, tied ones once.
        weights, updates = merged_weights(model)
        save_hf_weights(weights, folder, source_dir=source, config=model.config, max_shard_size=self.max_shard_size,
                        config_updates=updates, gather=lambda names: _whole_modules(model, names), writer=writer)

    @staticmethod
    def _fused(model: torch.nn.Module):

        return format_for(model.config).fused_projections

    # -- resuming --------------------------------------------------------------------------

    def resume_point(self, resume_from_checkpoint: bool | str) -> atomic.Checkpoint | None:
        """The checkpoint to resume from, or None to start fresh.

        A final checkpoint counts: with its training state, a longer run goes on from it.

        Raises:
            CheckpointError: a named checkpoint is not complete, nothing can be resumed, or the
                newest (or named) one is a final checkpoint without a training state.
            ConfigError: output_dir holds a run but resume_from_checkpoint is False.
        """
        named = self.named_resume(resume_from_checkpoint)
        if named is not None:
            resume_from_checkpoint = str(named)
        if resume_from_checkpoint is False:
            self._refuse_existing_run()
            return None
        for skipped in atomic.incomplete_checkpoints(self.output_dir):
            _say(f"Skipping incomplete checkpoint {skipped} (an interrupted save)")
        if isinstance(resume_from_checkpoint, str):
            return self._with_state(self._named(Path(resume_from_checkpoint)))
        resumable = [c for c in atomic.complete_checkpoints(self.output_dir)
                     if training_state.exists(c.path) or c.final]
        if not resumable:
            torchtune_made = torchtune_keys.torchtune_run(self.output_dir)
            if torchtune_made:  # starting over silently would look like a resume
                raise CheckpointError(
                    f"{self.output_dir} holds a torchtune run ({', '.join(p.name for p in torchtune_made)}), which "
                    "tunelib cannot resume: start a new run with checkpoint_dir set to its newest epoch_N folder "
                    "and a new output_dir (docs/migrating_from_torchtune.md)")
            _say(f"No complete checkpoint in {self.output_dir} yet: starting from the beginning")
            return None
        return self._with_state(resumable[-1])

    def named_resume(self, resume_from_checkpoint: bool | str) -> Path | None:
        """The checkpoint torchtune's recipe_checkpoint / adapter_checkpoint name (None: neither is set).

        Raises:
            CheckpointError: they name no complete tunelib checkpoint, or different ones.
            ConfigError: they are set but resume_from_checkpoint is False, or names another checkpoint.
        """
        named = torchtune_keys.resume_folder(self.output_dir, self.checkpoint_dir, **self.resume_keys)
        if named is None:
            return None
        if resume_from_checkpoint is False:
            raise ConfigError(f"checkpointer.recipe_checkpoint/adapter_checkpoint name {named}, which is read only "
                              "to resume: set resume_from_checkpoint=True, or set them to null")
        if isinstance(resume_from_checkpoint, str) and \
                self._named(Path(resume_from_checkpoint)).path.resolve() != named.resolve():
            raise ConfigError(f"resume_from_checkpoint={resume_from_checkpoint} but checkpointer.recipe_checkpoint/"
                              f"adapter_checkpoint name {named}; name the checkpoint once")
        return named

    def _with_state(self, checkpoint: atomic.Checkpoint) -> atomic.Checkpoint:
        if not checkpoint.final or training_state.exists(checkpoint.path):
            return checkpoint
        steps = [c for c in atomic.complete_checkpoints(self.output_dir)
                 if not c.final and training_state.exists(c.path)]
        instead = (f"set resume_from_checkpoint={steps[-1].path} to continue from its last step checkpoint, or "
                   if steps else "")
        raise CheckpointError(f"{checkpoint.path} has no training state (tunelib kept none with the final model "
                              f"before), so the finished run cannot be extended from it; {instead}start a new "
                              "output_dir")

    def set_aside_after(self, checkpoint: atomic.Checkpoint) -> tuple[Path, list[str]] | None:
        """Move the complete checkpoints of output_dir that come after `checkpoint` into
        `output_dir/abandoned/<time>/`, with a copy of metrics.jsonl and config.yaml.

        Resuming from an earlier checkpoint starts another branch of the run; the later ones
        belong to the branch it leaves. Moved aside, they are never pruned by
        keep_last_n_checkpoints, never resumed by resume_from_checkpoint=True and never
        replaced by this branch's saves; nothing is deleted.

        Returns:
            The folder they went to and their names (oldest first), or None when none came after.
        """
        later = [c for c in atomic.complete_checkpoints(self.output_dir)
                 if (c.step, c.final) > (checkpoint.step, checkpoint.final)]
        if not later:
            return None
        folder = self._new_abandoned_folder()
        for name in ("metrics.jsonl", "config.yaml"):  # the abandoned branch's log, before this run trims it
            if (self.output_dir / name).is_file():
                shutil.copy2(self.output_dir / name, folder / name)
        for c in later:
            os.rename(c.path, folder / c.path.name)
        return folder, [c.path.name for c in later]

    def _new_abandoned_folder(self) -> Path:
        base = self.output_dir / "abandoned" / time.strftime("%Y%m%d-%H%M%S")
        folder, n = base, 1
        while folder.exists():  # a second resume within the same second
            n += 1
            folder = base.with_name(f"{base.name}-{n}")
        folder.mkdir(parents=True)
        return folder

    def _named(self, path: Path) -> atomic.Checkpoint:
        path = path if path.is_absolute() or path.exists() else self.output_dir / path
        if not path.is_dir():
            raise CheckpointError(f"resume_from_checkpoint {path} does not exist; name a step_N folder of "
                                  "output_dir, or set resume_from_checkpoint=True for the newest complete one")
        checkpoint = atomic.read_marker(path)
        if checkpoint is None:
            raise CheckpointError(f"{path} is not a complete tunelib checkpoint (no {atomic.MARKER}); "
                                  "resume from another one, or set resume_from_checkpoint=True for the newest")
        return checkpoint

    def _refuse_existing_run(self) -> None:
        found = atomic.complete_checkpoints(self.output_dir)
        logged = (self.output_dir / "metrics.jsonl").is_file()
        if found or logged:
            what = ", ".join([c.path.name for c in found] + (["metrics.jsonl"] if logged else []))
            raise ConfigError(f"output_dir {self.output_dir} already holds a run ({what}); set "
                              "resume_from_checkpoint=True to continue it, or choose another output_dir")


def _whole_modules(model: torch.nn.Module, names: list[str]):
    """`whole_params` for every parameter of the modules that own `names` (their adapters too,
    which a merged weight is computed from)."""
    owners = tuple(f"{name.rpartition('.')[0]}." for name in names)
    wanted = [name for name, _ in model.named_parameters(remove_duplicate=False) if name.startswith(owners)]
    return whole_params(model, wanted)


def _say(message: str) -> None:
    # Under torchrun every rank looks for the resume point; one of them tells the user.
    if int(os.environ.get("RANK", 0)) == 0:
        print(message, flush=True)
