"""torchtune's checkpointer keys, checked against the model folder and the run's checkpoints.

torchtune's `FullModelHFCheckpointer` takes `checkpoint_files` (the weight files to read),
`model_type` (LLAMA3, QWEN2, ...), and for resuming `recipe_checkpoint` and
`adapter_checkpoint`. tunelib reads the files the folder's index names and the architecture
its config.json names, so the first two are checks that what the config says is what the
folder holds; the last two name the checkpoint a resume starts from.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from tunelib.checkpoint import atomic
from tunelib.checkpoint.hf_load import weight_files
from tunelib.errors import CheckpointError, ConfigError
from tunelib.models.registry import load_json

# torchtune's model_type -> the config.json model_type values it stands for.
MODEL_TYPES = {
    "LLAMA2": ("llama",), "LLAMA3": ("llama",), "LLAMA3_2": ("llama",), "MISTRAL": ("mistral",),
    "PHI3_MINI": ("phi3",), "PHI4": ("phi3",), "QWEN2": ("qwen2",), "QWEN3": ("qwen3",),
    "GEMMA": ("gemma",), "GEMMA2": ("gemma2",),
}
UNSUPPORTED_TYPES = ("LLAMA3_VISION", "LLAMA4", "CLIP_TEXT", "T5_ENCODER", "REWARD", "GEMMA3", "QWEN2_5_VISION")


def torchtune_run(output_dir: Path) -> list[Path]:
    """What in `output_dir` only a torchtune run writes: its `epoch_N` folders (without tunelib's
    completion marker) and its recipe state (`recipe_state/` in v0.6.1, `recipe_state.pt`)."""
    if not output_dir.is_dir():
        return []
    found = [p for p in sorted(output_dir.glob("epoch_*")) if p.is_dir() and not (p / atomic.MARKER).exists()]
    return found + [p for p in (output_dir / "recipe_state", output_dir / "recipe_state.pt") if p.exists()]


def listed_files(checkpoint_files: list[str] | dict) -> list[str]:
    """The names `checkpoint_files` gives: a list, or torchtune's `{filename_format, max_filename}`
    (`model-{}-of-{}.safetensors` with max_filename `00004`: the four shards).

    Raises:
        ConfigError: a dict without both keys, or a max_filename that is not a number.
    """
    if not isinstance(checkpoint_files, Mapping):  # a list, or a config's list node
        return [str(f) for f in checkpoint_files]
    fmt, last = checkpoint_files.get("filename_format"), str(checkpoint_files.get("max_filename", ""))
    if not isinstance(fmt, str) or not last.isdigit():
        raise ConfigError("checkpointer.checkpoint_files as a mapping needs filename_format (e.g. "
                          "model-{}-of-{}.safetensors) and max_filename (e.g. '00004')")
    return [fmt.format(str(i).zfill(len(last)), last) for i in range(1, int(last) + 1)]


def check_checkpoint_files(folder: Path, checkpoint_files: list[str] | dict) -> None:
    """Refuse `checkpoint_files` unless they are exactly the weight files the folder's index names.

    Raises:
        CheckpointError: a listed file is missing, or the folder's weights are other files.
    """
    listed = listed_files(checkpoint_files)
    missing = [name for name in listed if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(f"checkpointer.checkpoint_files names {', '.join(missing)}, not in {folder}; "
                              "list the folder's weight files or leave checkpoint_files out")
    used = sorted(f.name for f in weight_files(folder))
    if sorted(listed) != used:
        raise CheckpointError(f"checkpointer.checkpoint_files lists {', '.join(listed)} but {folder} holds its "
                              f"weights in {', '.join(used)}; tunelib reads every one of those, so list them all "
                              "or leave checkpoint_files out")


def check_model_type(folder: Path, model_type: str) -> None:
    """Refuse a torchtune `model_type` that is not the architecture the folder's config.json names.

    Raises:
        ConfigError: an unknown or unsupported model_type.
        CheckpointError: config.json describes another kind of model.
    """
    if model_type in UNSUPPORTED_TYPES:
        raise ConfigError(f"checkpointer.model_type={model_type} is not supported: tunelib fine-tunes text decoders "
                          f"({', '.join(MODEL_TYPES)})")
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"checkpointer.model_type={model_type} is not one of {', '.join(MODEL_TYPES)}; "
                          "or leave it out: config.json says what the model is")
    path = folder / "config.json"
    if not path.is_file():
        return  # the builder or the loader says the folder is not a model yet
    found = load_json(path).get("model_type")
    if found not in MODEL_TYPES[model_type]:
        raise CheckpointError(f"checkpointer.model_type={model_type} but {path} describes model_type {found!r}; "
                              f"set the model_type of that model or leave it out")


def resume_folder(output_dir: Path, checkpoint_dir: Path, recipe_checkpoint: str | None,
                  adapter_checkpoint: str | None) -> Path | None:
    """The checkpoint folder `recipe_checkpoint` / `adapter_checkpoint` name, or None when neither is set.

    Either may name the checkpoint folder (`step_100`) or a file or folder inside it
    (`step_100/training_state.pt`, `step_100/adapter`); a relative path is looked up in
    output_dir, then in checkpoint_dir (where torchtune looks).

    Raises:
        CheckpointError: the path is not inside a complete tunelib checkpoint (a torchtune
            run's recipe_state.pt cannot be resumed), or the two name different checkpoints.
    """
    found = {key: _checkpoint_of(key, value, output_dir, checkpoint_dir)
             for key, value in (("recipe_checkpoint", recipe_checkpoint), ("adapter_checkpoint", adapter_checkpoint))
             if value}
    folders = set(found.values())
    if len(folders) > 1:
        raise CheckpointError(f"checkpointer.recipe_checkpoint ({found['recipe_checkpoint']}) and "
                              f"checkpointer.adapter_checkpoint ({found['adapter_checkpoint']}) name different "
                              "checkpoints; a resume continues one: set one of them")
    return folders.pop() if folders else None


def _checkpoint_of(key: str, value: str, output_dir: Path, checkpoint_dir: Path) -> Path:
    path = Path(value)
    candidates = [path] if path.is_absolute() else [output_dir / path, checkpoint_dir / path]
    for candidate in candidates:
        for folder in [candidate, *candidate.parents][:3]:  # the checkpoint, or a file up to two levels in it
            if folder.is_dir() and atomic.read_marker(folder) is not None:
                return folder
    raise CheckpointError(f"checkpointer.{key}={value} is not in a complete tunelib checkpoint of {output_dir} "
                          "(a step_N or final folder); torchtune's own recipe_state.pt cannot be resumed: see "
                          "docs/migrating_from_torchtune.md")
