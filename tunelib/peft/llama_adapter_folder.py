"""LLaMA-Adapter folders: tunelib's own format, since PEFT has none that holds v1 or v2 exactly.

    adapter/
      tunelib_llama_adapter.json         {"format": "tunelib-llama-adapter", "adapter": "v2",
                                          "adapter_prompt_length": 10, "adapter_start_layer": 2, ...}
      tunelib_llama_adapter.safetensors  the trained tensors by tunelib parameter name

The file names say whose format it is, so nobody mistakes the folder for a PEFT adapter
(PEFT's `ADAPTION_PROMPT` has one scalar gate and no v2 scales, so it cannot hold these).
The JSON's `adapter*` keys are the model builder keywords, so
`tunelib.models.<family>.<builder>(adapter="v2", adapter_prompt_length=10, ...)` rebuilds the
same model. Tensor names are tunelib's: `model.layers.2.self_attn.adapter_prompt`,
`...adapter_gate`, and for v2 `<linear>.adapter_scale`, `<linear>.adapter_bias` and every norm
weight (`model.layers.0.input_layernorm.weight`, `model.norm.weight`, ...).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from tunelib.errors import CheckpointError, ConfigError
from tunelib.peft.llama_adapter import LlamaAdapterSpec, add_llama_adapter, checked_spec, llama_adapter_spec
from tunelib.peft.params import adapter_params, lora_modules, put_value
from tunelib.peft.peft_folder import read_safetensors

CONFIG_NAME = "tunelib_llama_adapter.json"
WEIGHTS_NAME = "tunelib_llama_adapter.safetensors"
FORMAT = "tunelib-llama-adapter"
FORMAT_VERSION = 1


def save_llama_adapter(model: nn.Module, out_dir: str | Path, *, base_model_name_or_path: str | None = None) -> Path:
    """Write `model`'s LLaMA-Adapter (settings JSON + safetensors) into `out_dir` and return it.

    Tensors keep their dtype and are copied to the CPU. Raises ValueError if the model has no
    LLaMA-Adapter.
    """
    spec = llama_adapter_spec(model)
    if spec is None:
        raise ValueError("the model has no LLaMA-Adapter to save")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {name: p.detach().to("cpu").contiguous().clone() for name, p in adapter_params(model).items()}
    save_file(tensors, out_dir / WEIGHTS_NAME, metadata={"format": "pt"})
    (out_dir / CONFIG_NAME).write_text(json.dumps(_settings(model, spec, base_model_name_or_path), indent=2) + "\n")
    return out_dir


def _settings(model: nn.Module, spec: LlamaAdapterSpec, base_model_name_or_path: str | None) -> dict:
    config = getattr(model, "config", None)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "adapter": spec.version,
        "adapter_prompt_length": spec.prompt_length,
        "adapter_start_layer": spec.start_layer,
        "base_model_name_or_path": base_model_name_or_path,
        "architecture": getattr(config, "architecture", None),
        "num_hidden_layers": len(model.model.layers),
        "hidden_size": model.model.embed_tokens.weight.shape[1],
        "load_with": "tunelib.peft.load_llama_adapter(tunelib.checkpoint.from_pretrained(base_model), this_folder)",
    }


def read_llama_adapter_config(adapter_dir: str | Path) -> LlamaAdapterSpec:
    """The spec a LLaMA-Adapter folder was saved with; CheckpointError (one line) if it is not one."""
    path = Path(adapter_dir) / CONFIG_NAME
    if not path.is_file():
        is_peft = (Path(adapter_dir) / "adapter_config.json").is_file()
        peft = " (it is a PEFT adapter folder: use load_peft_adapter)" if is_peft else ""
        raise CheckpointError(f"{adapter_dir}: no {CONFIG_NAME}, so it is not a tunelib LLaMA-Adapter folder{peft}")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: 'format' must be {FORMAT!r}")
    if data.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {data['format_version']} is newer than this tunelib reads "
                              f"({FORMAT_VERSION}); upgrade tunelib")
    try:
        return checked_spec(data.get("adapter"), data.get("adapter_prompt_length"), data.get("adapter_start_layer"))
    except ConfigError as e:  # here the file is at fault, not the config
        raise CheckpointError(f"{path}: {e}") from None


def load_llama_adapter(model: nn.Module, adapter_dir: str | Path) -> nn.Module:
    """Put the LLaMA-Adapter of `adapter_dir` onto `model` (in place) and return it.

    `model` is either a plain tunelib model with its base weights (e.g. from
    `tunelib.checkpoint.from_pretrained`), which then gets the adapter, or one built with the same
    adapter settings (a resumed run), whose adapter tensors are overwritten.

    Raises:
        CheckpointError: not a LLaMA-Adapter folder, settings that differ from the model's
            adapter, or a missing, unexpected or wrongly shaped tensor.
    """
    spec = read_llama_adapter_config(adapter_dir)
    have = llama_adapter_spec(model)
    if have is None:
        if lora_modules(model):
            raise CheckpointError(f"{adapter_dir}: this model has LoRA adapters; load a LLaMA-Adapter onto a plain model")
        add_llama_adapter(model, spec)
    elif have != spec:
        raise CheckpointError(f"{adapter_dir}: the folder holds {_describe(spec)} but the model has {_describe(have)}")
    weights = Path(adapter_dir) / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{adapter_dir}: no {WEIGHTS_NAME} next to {CONFIG_NAME}")
    _load_tensors(model, read_safetensors(weights), adapter_dir)
    return model


def _describe(spec: LlamaAdapterSpec) -> str:
    return f"adapter={spec.version}, adapter_prompt_length={spec.prompt_length}, adapter_start_layer={spec.start_layer}"


def _load_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], adapter_dir) -> None:
    params = adapter_params(model)
    for name, tensor in tensors.items():
        if name not in params:
            raise CheckpointError(f"{adapter_dir}: {name} has no place in this model's LLaMA-Adapter")
        if tuple(tensor.shape) != tuple(params[name].shape):
            raise CheckpointError(f"{adapter_dir}: {name} has shape {tuple(tensor.shape)} but the model's is "
                                  f"{tuple(params[name].shape)}; the adapter was made for a different model")
    missing = sorted(params.keys() - tensors.keys())
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise CheckpointError(f"{adapter_dir}: the adapter file has no tensor for {missing[0]}{more}")
    for name, tensor in tensors.items():
        put_value(model, name, tensor)

