"""Write a Hugging Face model folder that transformers, PEFT and vLLM load as it is.

The folder holds safetensors shards (plus `model.safetensors.index.json` when there is more
than one), `config.json`, `generation_config.json`, and the tokenizer and license files of the
model it came from. Writing into a temporary folder and renaming it is the caller's job
(`tunelib.checkpoint.atomic`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import shutil
from pathlib import Path
from typing import Any, Callable, ContextManager

import torch

from tunelib.checkpoint.pending import PendingWeight
from tunelib.checkpoint.safetensors_io import Planned, write_streamed
from tunelib.models.config import DecoderConfig
from tunelib.models.registry import format_for, load_json, read_hf_config

# Copied from the source folder when present; everything a tokenizer or a license needs.
COPIED_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "tokenizer.model", "original/tokenizer.model", "chat_template.jinja", "chat_template.json",
    "vocab.json", "merges.txt", "vocab.txt", "LICENSE", "LICENSE.txt", "LICENSE.md", "NOTICE",
    "USE_POLICY.md",
)
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_LAYER = re.compile(r"^model\.layers\.\d+\.")


def hf_state_dict(state_dict: dict[str, torch.Tensor], config: DecoderConfig) -> dict[str, torch.Tensor]:
    """Our parameter names -> the checkpoint keys of `config`'s HF format (tied lm_head dropped)."""
    tensors = {name: t for name, t in state_dict.items()
               if not (config.tie_word_embeddings and name == "lm_head.weight")}
    return format_for(config).fuse(tensors, config)


def save_hf_folder(state_dict: dict[str, torch.Tensor], out_dir: str | Path, *, source_dir: str | Path | None = None,
                   config: DecoderConfig | None = None, max_shard_size: int | str = "5GB",
                   config_updates: dict[str, Any] | None = None) -> Path:
    """Write `state_dict` (our parameter names, plain tensors) as an HF model folder.

    Args:
        state_dict: e.g. `model.state_dict()` or PEFT's merged weights.
        out_dir: created if needed; weight files from an earlier save there are replaced.
        source_dir: the folder the model was loaded from; its config.json (with
            `config_updates` applied), generation config, tokenizer and license files are copied.
        config: the model's DecoderConfig; needed when there is no source_dir, and then
            config.json is generated from it.
        max_shard_size: largest shard, e.g. "5GB" or a number of bytes.
        config_updates: keys to set in config.json (e.g. {"torch_dtype": "bfloat16"}).

    Returns:
        out_dir as a Path.

    Raises:
        CheckpointError: source_dir's config.json is missing or unsupported.
    """
    weights = {name: PendingWeight(tuple(t.shape), t.dtype, lambda t=t: t) for name, t in state_dict.items()}
    return save_hf_weights(weights, out_dir, source_dir=source_dir, config=config, max_shard_size=max_shard_size,
                           config_updates=config_updates)


def save_hf_weights(weights: dict[str, PendingWeight], out_dir: str | Path, *, source_dir: str | Path | None = None,
                    config: DecoderConfig | None = None, max_shard_size: int | str = "5GB",
                    config_updates: dict[str, Any] | None = None,
                    gather: Callable[[list[str]], ContextManager] | None = None, writer: bool = True) -> Path:
    """Write `weights` as an HF model folder, computing and writing them one group at a time.

    A group is one decoder layer's weights, or one other weight; it is computed (after
    `gather(its names)` made them whole, when given: every process must call this alike
    under FSDP2), fused into the checkpoint's keys, written, and dropped before the next, so
    the writer holds at most one layer beside the model. Other arguments as `save_hf_folder`;
    `writer=False` on processes that only take part in the gathers (they write nothing).
    """
    if config is None and source_dir is None:
        raise ValueError("save_hf_folder needs source_dir or config to know the model's format")
    out = Path(out_dir)
    source = Path(source_dir) if source_dir is not None else None
    config = config or read_hf_config(source)
    if (config_updates or {}).get("tie_word_embeddings") is False and config.tie_word_embeddings:
        # A merged lm_head or embedding adapter unties the two: write both weights.
        config = dataclasses.replace(config, tie_word_embeddings=False)
    groups = [(_planned(weights, names, config), _producer(weights, names, config, gather, writer))
              for names in _groups(weights)]
    if writer:
        out.mkdir(parents=True, exist_ok=True)
    write_streamed(out, groups, parse_size(max_shard_size), writer=writer)
    if writer:
        planned = {t.key: torch.empty(t.shape, dtype=t.dtype, device="meta") for plan, _ in groups for t in plan}
        write_folder_files(out, config, source, planned, config_updates or {})
    return out


def parse_size(size: int | str) -> int:
    """Bytes in a size such as 5GB (10^9, as Hugging Face counts) or 512MiB (2^20); ints as they are.

    Raises:
        ValueError: not a size.
    """
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", str(size), flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"max_shard_size={size!r} is not a size such as 5GB or 500MB")
    unit = (match.group(2) or "B").upper()
    factor = 1024 ** "BKMGT".index(unit[0]) if "I" in unit else 1000 ** "BKMGT".index(unit[0])
    return int(float(match.group(1)) * factor)


def _groups(weights: dict[str, PendingWeight]) -> list[list[str]]:
    """Names by decoder layer (`model.layers.N.`), and each other name alone, in model order."""
    groups: dict[str, list[str]] = {}
    for name in weights:
        layer = _LAYER.match(name)
        groups.setdefault(layer.group(0) if layer else name, []).append(name)
    return list(groups.values())


def _planned(weights: dict[str, PendingWeight], names: list[str], config: DecoderConfig) -> list[Planned]:
    meta = {name: torch.empty(weights[name].shape, dtype=weights[name].dtype, device="meta") for name in names}
    return [Planned(key, tuple(t.shape), t.dtype) for key, t in hf_state_dict(meta, config).items()]


def _producer(weights: dict[str, PendingWeight], names: list[str], config: DecoderConfig, gather, writer: bool):
    def produce() -> dict[str, torch.Tensor] | None:
        with gather(names) if gather is not None else contextlib.nullcontext():
            values = {name: weights[name].make() for name in names}
            if not writer:
                return None
            return {key: t.detach().to("cpu").contiguous() for key, t in hf_state_dict(values, config).items()}

    return produce


def write_folder_files(out: Path, config: DecoderConfig, source: Path | None, tensors: dict,
                       updates: dict) -> None:
    """Write everything of an HF model folder but the weights into `out`.

    config.json (the source's, or made from `config`, stating the dtype of `tensors` and
    with `updates` applied), generation_config.json, and the tokenizer files of `source`.
    """
    config_json = _config_json(config, source, tensors, updates)
    _write_json(out / "config.json", config_json)
    _write_generation_config(out, source, config_json)
    if source is not None:
        _copy_files(source, out)


def _config_json(config: DecoderConfig, source: Path | None, tensors: dict, updates: dict) -> dict:
    if source is not None and (source / "config.json").is_file():
        data = load_json(source / "config.json")
    else:
        data = format_for(config).write(config)
    dtypes = {t.dtype for t in tensors.values() if t.is_floating_point()}
    if len(dtypes) == 1 and next(iter(dtypes)) in _DTYPE_NAMES:
        # Say what the files hold; transformers 5 calls the key "dtype", earlier versions "torch_dtype".
        name = _DTYPE_NAMES[dtypes.pop()]
        for key in [k for k in ("dtype", "torch_dtype") if k in data] or ["torch_dtype"]:
            data[key] = name
    data.update(updates)
    return data


def _write_generation_config(out: Path, source: Path | None, config_json: dict) -> None:
    if source is not None and (source / "generation_config.json").is_file():
        shutil.copyfile(source / "generation_config.json", out / "generation_config.json")
        return
    ids = {key: config_json[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id")
           if config_json.get(key) is not None}
    _write_json(out / "generation_config.json", {"_from_model_config": True, **ids})


def _copy_files(source: Path, out: Path) -> None:
    for name in COPIED_FILES:
        if (source / name).is_file():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / name, out / name)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
