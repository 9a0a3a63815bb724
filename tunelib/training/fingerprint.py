"""What decides a run's numbers, recorded with every checkpoint so a resume can tell a change.

    numbers = run_fingerprint(cfg, model, tokenizer, adapters=True)
    # {"dtype": "bf16", "model.config.hidden_size": 2048, "model.lora_dropout": 0.05,
    #  "tokenizer.max_seq_len": 2048, "dataset.split": "train",
    #  "dataset.data_files content": "sha256:1f0c...", ...}

Entries are read from what was built, not from the config's spelling, so `[q_proj, v_proj]`
and `[v_proj, q_proj]` are the same run: the model's architecture and sizes (its
DecoderConfig), its adapters (LoRA rank, alpha, dropout, targets, DoRA, rsLoRA, NF4 base;
LLaMA-Adapter settings) and, for an adapter run, the base weights they sit on, the precision,
the tokenizer (vocabulary files, chat format, truncation) and the training data. Local data
files count by their bytes, not their path, so a moved file resumes and a file rewritten in
place does not; a Hub dataset counts by its name, split and revision (every key of its node).
Names are what a user would look for in the config, and values are plain (str, int, float,
bool, None, lists, dicts), as `torch.load(weights_only=True)` reads them.
"""

from __future__ import annotations

import glob
import hashlib
from dataclasses import fields
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from torch import nn

from tunelib.checkpoint import weight_files
from tunelib.data.sources import LOCAL_FORMATS
from tunelib.peft import llama_adapter_spec, lora_modules

# The base weights are told apart by samples (sizes and slices of each file): another checkpoint
# differs everywhere, and reading all of an 8B model at every start would cost a minute.
_SLICES, _SLICE_BYTES = 16, 64 * 1024
# Dataset keys that change how fast the data is read, not what it is.
_NOT_DATA = ("num_proc", "cache_dir")
# Dataset keys that locate local files; their content stands for them when they are local.
_LOCATING = ("data_files", "data_dir")


def run_fingerprint(cfg, model: nn.Module, tokenizer, *, adapters: bool) -> dict[str, Any]:
    """The entries of a run that a resume must find unchanged (see the module docstring).

    `cfg` is the checked config, `model` the built model (its weights may still be on meta),
    `tokenizer` the built tokenizer; with `adapters`, the base weights in checkpoint_dir count
    too (a full fine-tuning run resumes its own weights). Reads every local data file once.

    Raises:
        CheckpointError: with `adapters`, checkpoint_dir holds no weights.
    """
    base = base_weight_entries(Path(cfg.checkpoint_dir)) if adapters else {}
    # How trained weights are kept (the adapter recipes' or full fine-tuning's setting).
    kept = {key: cfg[key] for key in ("adapter_dtype", "weight_precision") if key in cfg}
    return {"dtype": cfg.dtype, **kept, **model_entries(model), **base, **adapter_entries(model),
            **tokenizer_entries(tokenizer), **dataset_entries(cfg.dataset)}


def model_entries(model: nn.Module) -> dict[str, Any]:
    """`model.config.<field>` for every field of the model's DecoderConfig."""
    config = model.config
    return {f"model.config.{f.name}": _plain(getattr(config, f.name)) for f in fields(config)}


def base_weight_entries(folder: Path) -> dict[str, Any]:
    """`checkpoint_dir weights`: a digest of the sizes and sampled slices of the folder's weight files."""
    whole = hashlib.sha256()
    for path in weight_files(folder):
        size = path.stat().st_size
        whole.update(f"{path.name}:{size};".encode())
        with open(path, "rb") as f:
            for i in range(_SLICES):
                f.seek(size * i // _SLICES)
                whole.update(f.read(_SLICE_BYTES))
    return {"checkpoint_dir weights": f"sha256:{whole.hexdigest()[:16]}"}


def adapter_entries(model: nn.Module) -> dict[str, Any]:
    """The adapter settings the model was built with, named as the model builder's keys."""
    out: dict[str, Any] = {"model.quantize_base": any(getattr(m, "quantize_base", False) for m in model.modules())}
    lora = lora_modules(model)
    if lora:
        specs = [module.spec for module in lora.values()]
        out["LoRA target modules"] = sorted({name.rsplit(".", 1)[-1] for name in lora})
        for key, attr in (("lora_rank", "rank"), ("lora_alpha", "alpha"), ("lora_dropout", "dropout"),
                          ("use_rslora", "use_rslora"), ("use_dora", "use_dora")):
            values = sorted({getattr(spec, attr) for spec in specs})
            out[f"model.{key}"] = values[0] if len(values) == 1 else values
    spec = llama_adapter_spec(model)
    if spec is not None:
        out.update({"model.adapter": spec.version, "model.adapter_prompt_length": spec.prompt_length,
                    "model.adapter_start_layer": spec.start_layer})
    return out


def tokenizer_entries(tokenizer) -> dict[str, Any]:
    """What decides the token ids and labels: vocabulary files, chat format, special ids, truncation."""
    template = tokenizer.chat_template
    return {
        "tokenizer vocabulary": tokenizer.codec.fingerprint,
        "tokenizer.chat_format": tokenizer.chat_format,
        "tokenizer chat template": _digest(template.encode()) if template else None,
        "tokenizer special ids (bos, eos, adds bos)": [tokenizer.bos_id, tokenizer.eos_id, tokenizer.adds_bos],
        "tokenizer.max_seq_len": tokenizer.max_seq_len,
        "tokenizer.truncation_type": tokenizer.truncation_type,
    }


def dataset_entries(node) -> dict[str, Any]:
    """Every key of the dataset node(s), and the content of their local files.

    A list of datasets gives `dataset[0].split`, `dataset[1].split`, ...; a single one
    `dataset.split`. Where every file a node names is local, `<prefix>.data_files content`
    holds a hash of their bytes in place of the paths.
    """
    plain = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    nodes = plain if isinstance(plain, list) else [plain]
    out = {}
    for i, one in enumerate(nodes):
        prefix = f"dataset[{i}]" if isinstance(plain, list) else "dataset"
        out.update(_one_dataset(prefix, dict(one or {})))
    return out


def _one_dataset(prefix: str, node: dict) -> dict[str, Any]:
    files = local_data_files(node)
    skip = set(_NOT_DATA) | (set(_LOCATING) if files is not None else set())
    if files is not None and _is_folder(node.get("source")):
        skip.add("source")
    out = {f"{prefix}.{key}": value for key, value in _leaves(node) if key.split(".")[0] not in skip}
    if files is not None:
        out[f"{prefix}.data_files content"] = _files_digest(files)
    return out


def local_data_files(node: dict) -> list[Path] | None:
    """The local files a dataset node reads, in the order given; None when any is not local.

    `data_files` (a path, a glob, a list or a split -> files dict) is read relative to a
    local `source` folder and `data_dir`, as `datasets.load_dataset` reads it; without
    `data_files`, a local `source` folder means every file under it.
    """
    source, data_dir, data_files = node.get("source"), node.get("data_dir"), node.get("data_files")
    base = Path(source) if _is_folder(source) else Path(".")
    if data_dir:
        base = base / data_dir
    if data_files is None:
        if not _is_folder(source):
            return None
        return sorted(p for p in base.rglob("*") if p.is_file() and not _hidden(p.relative_to(base)))
    found = []
    for name in _names(data_files):
        if "://" in name:
            return None
        pattern = Path(name) if Path(name).is_absolute() else base / name
        matches = sorted(Path(p) for p in glob.glob(str(pattern))) if glob.has_magic(name) else [pattern]
        if not matches or not all(p.is_file() for p in matches):
            return None
        found.extend(matches)
    return found


def _names(data_files) -> list[str]:
    if isinstance(data_files, dict):
        return [str(f) for value in data_files.values() for f in _names(value)]
    if isinstance(data_files, (list, tuple)):
        return [str(f) for f in data_files]
    return [str(data_files)]


def _is_folder(source) -> bool:
    return isinstance(source, str) and source not in LOCAL_FORMATS and Path(source).is_dir()


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _leaves(node: dict, prefix: str = ""):
    """(dotted key, value) for each value of a nested dict; lists are values."""
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{name}.")
        else:
            yield name, _plain(value)


def _files_digest(files: list[Path]) -> str:
    whole = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            whole.update(hashlib.file_digest(f, "sha256").digest())
    return f"sha256:{whole.hexdigest()[:16]}"


def _digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()[:16]}"


def _plain(value):
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)  # e.g. a callable given from Python: the weights-only loader reads only plain values
