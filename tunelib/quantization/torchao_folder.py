"""Hugging Face model folders whose linear weights are torchao tensors, stored as safetensors.

The layout is the one transformers writes and reads for `TorchAoConfig` (transformers >= 5
with torchao >= 0.14), so `AutoModelForCausalLM.from_pretrained(folder)` loads what
`save_quantized` writes, and `load_quantized` loads folders transformers wrote:

    config.json                 the model's config + "quantization_config": {"quant_method": "torchao",
                                "quant_type": {"default": <torchao config as a dict>}, ...}
    model.safetensors           (or shards + model.safetensors.index.json)
        model.layers.0.self_attn.q_proj._weight_qdata    int8 (out, in)
        model.layers.0.self_attn.q_proj._weight_scale    one scale per row ...
        model.embed_tokens.weight                        plain tensors as usual
      header metadata           per tensor: its torchao class and attributes as JSON
                                (torchao.prototype.safetensors); nothing is unpickled
    generation_config.json, tokenizer files    copied from the source folder
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from torch import nn

from tunelib.checkpoint import weight_files
from tunelib.checkpoint.hf_load import materialize_buffers
from tunelib.checkpoint.hf_save import _DTYPE_NAMES, write_folder_files
from tunelib.errors import CheckpointError
from tunelib.models import from_hf_config
from tunelib.models.registry import format_for
from tunelib.quantization.nf4 import _quiet_import
from tunelib.quantization.weight_only import is_torchao_tensor

QUANT_METHOD = "torchao"
INDEX = "model.safetensors.index.json"


def _torchao_safetensors():
    """torchao's (de)flattening of tensor subclasses for safetensors, imported quietly."""
    with _quiet_import():
        from torchao.prototype.safetensors import safetensors_support
    return safetensors_support


# ---------------------------------------------------------------- reading


def quantization_name(folder: str | Path) -> str | None:
    """The torchao config name of a quantized folder ("Int8WeightOnlyConfig"), None if not quantized.

    Raises:
        CheckpointError: the folder is quantized by another method (GPTQ, AWQ, bitsandbytes...).
    """
    path = Path(folder) / "config.json"
    try:
        quant = json.loads(path.read_text()).get("quantization_config")
    except (OSError, ValueError, AttributeError):
        return None  # the model loader reports a missing or broken config.json
    if not quant:
        return None
    method = quant.get("quant_method")
    if method != QUANT_METHOD:
        raise CheckpointError(f"{path} says the weights are quantized with {method!r}, which tunelib cannot load; "
                              "use the unquantized model (tune run quantize makes torchao int8/int4 folders)")
    quant_type = quant.get("quant_type")
    default = quant_type.get("default") if isinstance(quant_type, dict) else None
    return default.get("_type", "torchao") if isinstance(default, dict) else str(quant_type)


def load_quantized(folder: str | Path, *, dtype: torch.dtype | None = None, device: torch.device | str = "cpu"):
    """A CausalLM (eval mode) from a torchao folder, on `device`, quantized weights kept quantized.

    `dtype` must be None or the dtype the folder was quantized in (quantized weights cannot
    change dtype).

    Raises:
        CheckpointError: weights that do not fit the model, a dtype that differs, or torchao
            metadata that is missing or unreadable.
    """
    folder, device = Path(folder), torch.device(device)
    _check_dtype(folder, dtype)
    model = from_hf_config(folder)
    state = _read_state(folder, weight_files(folder))
    fmt = format_for(model.config)
    params = _slots(model)
    loaded = set()
    for key, tensor in state.items():
        for name, part in _split(key, tensor, model, fmt):
            if name in params.tied:
                continue  # a tied checkpoint may store lm_head too: the embedding is the weight
            _check_shape(params, name, part, folder)
            _assign(model, name, part.to(device))
            loaded.add(name)
    _check_complete(params, loaded, folder)
    if model.config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    materialize_buffers(model, device)
    return model.eval()


def _check_dtype(folder: Path, dtype: torch.dtype | None) -> None:
    config = json.loads((folder / "config.json").read_text())
    saved = config.get("dtype") or config.get("torch_dtype")
    if dtype is not None and saved and _DTYPE_NAMES.get(dtype) != saved:
        raise CheckpointError(f"{folder} was quantized in {saved}; load it with dtype=auto (or quantize again "
                              f"in {_DTYPE_NAMES.get(dtype, dtype)})")


def _read_state(folder: Path, files: list[Path]) -> dict[str, torch.Tensor]:
    """Every tensor of the folder, torchao tensors rebuilt from their parts and metadata."""
    from safetensors import safe_open

    if any(f.suffix != ".safetensors" for f in files):
        raise CheckpointError(f"{folder} is a torchao folder without safetensors; tunelib reads only safetensors "
                              "torchao folders (written by tune run quantize or transformers >= 5)")
    tensors, metadata = {}, {}
    for path in files:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata.update(f.metadata() or {})
            tensors.update({key: f.get_tensor(key) for key in f.keys()})
    if "tensor_names" not in metadata:
        raise CheckpointError(f"{folder}: the safetensors header has no torchao metadata ('tensor_names'); "
                              "the folder was not written by torchao's safetensors support")
    try:
        state, leftover = _torchao_safetensors().unflatten_tensor_state_dict(tensors, metadata)
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{folder}: torchao cannot rebuild its tensors ({e}); was it written by another "
                              "torchao version?") from None
    if leftover:
        raise CheckpointError(f"{folder}: {len(leftover)} stored tensors belong to no weight, e.g. {next(iter(leftover))}")
    return state


def _split(key: str, tensor: torch.Tensor, model: nn.Module, fmt):
    """Checkpoint key -> our parameters; a quantized fused projection is cut into row ranges."""
    module_name, _, leaf = key.rpartition(".")
    parent, _, fused = module_name.rpartition(".")
    parts = (fmt.fused_projections or {}).get(fused)
    if not is_torchao_tensor(tensor) or not parts:
        return fmt.split(key, tensor, model.config)
    out, start = [], 0
    for part in parts:
        rows = model.get_submodule(f"{parent}.{part}").weight.shape[0]
        out.append((f"{parent}.{part}.{leaf}", tensor[start:start + rows]))
        start += rows
    if start != tensor.shape[0]:
        return [(key, tensor)]  # _check_shape names the key and its shape
    return out


@dataclasses.dataclass
class _Params:
    shapes: dict[str, tuple[int, ...]]
    tied: set[str]


def _slots(model: nn.Module) -> _Params:
    """The model's parameters and persistent buffers by name; names that alias an earlier one are tied."""
    shapes, seen, tied = {}, set(), set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            tied.add(name)
            continue
        seen.add(id(tensor))
        shapes[name] = tuple(tensor.shape)
    return _Params(shapes, tied)


def _check_shape(params: _Params, name: str, tensor: torch.Tensor, folder: Path) -> None:
    if name not in params.shapes:
        raise CheckpointError(f"{folder} has weight '{name}' {tuple(tensor.shape)} that the model does not have; "
                              "is config.json the config of these weights?")
    if tuple(tensor.shape) != params.shapes[name]:
        raise CheckpointError(f"{folder}: weight '{name}' has shape {tuple(tensor.shape)} but the model expects "
                              f"{params.shapes[name]}")


def _check_complete(params: _Params, loaded: set[str], folder: Path) -> None:
    missing = [name for name in params.shapes if name not in loaded]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise CheckpointError(f"{folder} lacks weight '{missing[0]}'{more}; is it the checkpoint of this model?")


def _assign(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    if attr in module._buffers:
        module.register_buffer(attr, tensor)
    else:
        setattr(module, attr, nn.Parameter(tensor, requires_grad=False))


def quantization_config(torchao_config) -> dict:
    """The `quantization_config` entry of config.json for a torchao config, as transformers writes it."""
    from torchao.core.config import config_to_dict

    return {"quant_method": QUANT_METHOD, "quant_type": {"default": config_to_dict(torchao_config)},
            "include_input_output_embeddings": False, "modules_to_not_convert": None,
            "untie_embedding_weights": False}


def save_quantized(tensors: dict[str, torch.Tensor], out_dir: str | Path, *, config, torchao_config,
                   source_dir: str | Path | None, config_updates: dict | None = None,
                   max_shard_size: int = 5 * 1024**3) -> Path:
    """Write checkpoint-keyed `tensors` (some torchao tensors) as a quantized HF folder into `out_dir`.

    `config` is the model's DecoderConfig; config.json, the generation config and tokenizer
    files come from `source_dir` when it has them.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    flat, metadata = _torchao_safetensors().flatten_tensor_state_dict(
        {key: t.detach().to("cpu") for key, t in tensors.items()})
    metadata = {**metadata, "format": "pt"}  # every shard carries all of it, as transformers writes
    shards = _shards(flat, max_shard_size)
    names = _shard_names(len(shards))
    for name, shard in zip(names, shards):
        save_file({k: v.contiguous() for k, v in shard.items()}, out / name, metadata=metadata)
    if len(shards) > 1:
        weight_map = {key: name for name, shard in zip(names, shards) for key in shard}
        total = sum(t.numel() * t.element_size() for t in flat.values())
        _write_json(out / INDEX, {"metadata": {"total_size": total}, "weight_map": weight_map})
    # config.json states the dtype the torchao tensors compute in, which is what they report.
    write_folder_files(out, config, Path(source_dir) if source_dir is not None else None, tensors,
                       {**(config_updates or {}), "quantization_config": quantization_config(torchao_config)})
    return out


def _shards(flat: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Split tensors into files of at most max_bytes, keeping the parts of one weight together."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in flat.items():
        groups.setdefault(_owner(key), {})[key] = tensor
    shards, size = [{}], 0
    for group in groups.values():
        nbytes = sum(t.numel() * t.element_size() for t in group.values())
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1].update(group)
        size += nbytes
    return shards


def _owner(key: str) -> str:
    """`a.b._weight_qdata` -> `a.b.weight`: the weight a flattened part belongs to."""
    module, _, leaf = key.rpartition(".")
    if leaf.startswith("_"):
        return f"{module}.{leaf[1:].split('_', 1)[0]}"
    return key


def _shard_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
