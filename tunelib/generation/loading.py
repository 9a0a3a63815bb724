"""Load a model for inference from any folder a user has after training.

    loaded = load_model("/tmp/Llama-3.2-1B-Instruct", adapter_dir="out/final/adapter")
    loaded.model, loaded.tokenizer_dir

`checkpoint_dir` may be a Hugging Face model folder (downloaded, a full fine-tune's `final/`,
a LoRA run's `final/merged/`, a `tune merge_lora` output), a folder `tune run quantize` wrote
(torchao weights), or a LoRA run's `final/` (its `merged/` is used). `adapter_dir` adds a PEFT
LoRA/DoRA adapter (ours or PEFT's) or a tunelib LLaMA-Adapter folder on top of the base.
Folders that are not what was asked for get a one-line error saying which folder to pass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tunelib.checkpoint import load_hf_weights
from tunelib.errors import CheckpointError, ConfigError
from tunelib.models import from_hf_config
from tunelib.models.registry import format_for
from tunelib.peft import load_llama_adapter, load_peft_adapter, lora_modules
from tunelib.quantization import torchao_folder

PEFT_CONFIG = "adapter_config.json"
LLAMA_ADAPTER_CONFIG = "tunelib_llama_adapter.json"  # tunelib.peft.llama_adapter_folder.CONFIG_NAME
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Loaded:
    """A model ready to run, and where its parts came from."""

    model: torch.nn.Module
    folder: Path  # the model folder the weights came from
    adapter: Path | None  # the adapter folder applied on top, if any
    quantization: str | None  # e.g. "Int8WeightOnlyConfig" for a `tune run quantize` folder
    tokenizer_dir: Path  # where the tokenizer files are

    def describe(self) -> str:
        """One line for the terminal: what was loaded."""
        what = f"{self.folder}"
        if self.quantization:
            what += f" ({self.quantization})"
        if self.adapter:
            what += f" + adapter {self.adapter}"
        return what


def resolve_device(name: str) -> torch.device:
    """`auto`: the GPU if there is one, else the CPU.

    Raises:
        ConfigError: CUDA asked for but not visible.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device is cuda but no CUDA GPU is visible; set device=cpu")
    return device


def resolve_dtype(name: str, folder: Path, device: torch.device) -> torch.dtype | None:
    """The dtype to load weights in; None keeps each file's own.

    `auto` keeps the checkpoint's dtype, except float16 on the CPU, which becomes float32
    (CPU float16 kernels are slow or missing).
    """
    if name != "auto":
        if name not in DTYPES:
            raise ConfigError(f"dtype={name!r}; use auto, fp32, bf16 or fp16")
        return DTYPES[name]
    saved = checkpoint_dtype(folder)
    if saved == torch.float16 and device.type == "cpu":
        return torch.float32
    return saved


def checkpoint_dtype(folder: Path) -> torch.dtype | None:
    """The dtype config.json says the weights are in (`dtype`, or `torch_dtype` before transformers 5)."""
    config = _read_json(folder / "config.json")
    return _DTYPE_NAMES.get(config.get("dtype") or config.get("torch_dtype"))


def resolve_model_folder(checkpoint_dir: str | Path) -> Path:
    """The model folder to load for `checkpoint_dir`, following a LoRA run's `final/` to `final/merged/`.

    Raises:
        CheckpointError: the folder is missing or is not a model (an adapter, a run's output
            folder); the message names the folder to pass instead.
    """
    folder = Path(checkpoint_dir).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f"model folder {folder} does not exist; pass a Hugging Face model folder")
    if (folder / "config.json").is_file():
        return folder
    if (folder / "merged" / "config.json").is_file():
        return folder / "merged"
    if (folder / PEFT_CONFIG).is_file() or (folder / LLAMA_ADAPTER_CONFIG).is_file():
        raise CheckpointError(f"{folder} is an adapter, not a model: pass the base model as checkpoint_dir "
                              f"and this folder as adapter_dir{_base_hint(folder)}")
    if (folder / "adapter").is_dir():
        raise CheckpointError(f"{folder} holds only an adapter (no merged model): pass checkpoint_dir=<base model> "
                              f"adapter_dir={folder / 'adapter'}{_base_hint(folder / 'adapter')}")
    if (folder / "final").is_dir():
        return resolve_model_folder(folder / "final")  # a run's output_dir: its final model
    raise CheckpointError(f"{folder} has no config.json; pass a Hugging Face model folder")


def resolve_adapter_folder(adapter_dir: str | Path) -> Path:
    """The adapter folder for `adapter_dir`, following a LoRA run's `final/` to `final/adapter/`.

    Raises:
        CheckpointError: no adapter there.
    """
    folder = Path(adapter_dir).expanduser()
    for candidate in (folder, folder / "adapter", folder / "final" / "adapter"):
        if (candidate / PEFT_CONFIG).is_file() or (candidate / LLAMA_ADAPTER_CONFIG).is_file():
            return candidate
    if not folder.is_dir():
        raise CheckpointError(f"adapter folder {folder} does not exist")
    raise CheckpointError(f"{folder} holds no adapter ({PEFT_CONFIG} or {LLAMA_ADAPTER_CONFIG}); pass the "
                          "adapter folder of a run, e.g. output_dir/final/adapter")


def load_model(checkpoint_dir: str | Path, *, adapter_dir: str | Path | None = None, dtype: str = "auto",
               device: str | torch.device = "auto", tokenizer_dir: str | Path | None = None,
               merge_adapter: bool = True) -> Loaded:
    """A model in eval mode with its weights (and adapter), on `device`.

    Args:
        checkpoint_dir: a model folder (see the module docs for which folders work).
        adapter_dir: a PEFT LoRA/DoRA folder or a tunelib LLaMA-Adapter folder, or None.
        dtype: auto (the checkpoint's), fp32, bf16 or fp16.
        device: auto, cpu, cuda or cuda:N.
        tokenizer_dir: where the tokenizer is (default: the model folder).
        merge_adapter: fold a LoRA/DoRA adapter into the weights it adapts, so that generating
            costs what the base model costs (DoRA would otherwise recompute a weight norm per
            layer per token). The outputs are the same up to rounding in the weights' dtype.
            False keeps the adapter modules, for `tunelib.peft.merged_state_dict`, which also
            reports whether tied embeddings must be untied. LLaMA-Adapter prompts are never folded.

    Raises:
        CheckpointError, ConfigError: a folder, dtype or device that cannot be used.
    """
    folder = resolve_model_folder(checkpoint_dir)
    adapter = resolve_adapter_folder(adapter_dir) if adapter_dir else None
    device = device if isinstance(device, torch.device) else resolve_device(device)
    quantization = torchao_folder.quantization_name(folder)
    if quantization is not None:
        if adapter is not None:
            raise CheckpointError(f"{folder} is quantized; an adapter cannot go on top of it. Quantize the base "
                                  f"with the adapter instead: tune run quantize --config quantization "
                                  f"checkpoint_dir=<base> adapter_dir={adapter}")
        if quantization.startswith("Int4") and device.type != "cuda":
            # torchao's int4 weights are packed for CUDA's tinygemm kernel; there is no CPU path.
            raise CheckpointError(f"{folder} holds int4 weights ({quantization}), which run on a CUDA GPU only; "
                                  "set device=cuda, or quantize with scheme=int8 for the CPU")
        model = torchao_folder.load_quantized(folder, dtype=None if dtype == "auto" else DTYPES.get(dtype),
                                              device=device)
    else:
        model = _load_plain(folder, adapter, resolve_dtype(dtype, folder, device), device)
        if merge_adapter:
            fold_lora(model)
    return Loaded(model.eval(), folder, adapter, quantization, Path(tokenizer_dir) if tokenizer_dir else folder)


def is_llama_adapter(adapter: Path) -> bool:
    """Whether `adapter` is a tunelib LLaMA-Adapter folder (rather than a PEFT LoRA/DoRA one)."""
    return (adapter / LLAMA_ADAPTER_CONFIG).is_file()


def fold_lora(model: torch.nn.Module) -> torch.nn.Module:
    """Replace every LoRA/DoRA module of `model` by a plain Linear/Embedding holding its merged
    weight (in place; for inference: the adapter cannot be trained or saved afterwards).

    A tied output layer keeps the base embedding when only the embedding had an adapter, and
    gets its own merged weight when it had one itself, exactly as the unmerged model computes.
    """
    for name, module in lora_modules(model).items():
        weight = nn.Parameter(module.merged_weight().detach(), requires_grad=False)
        if isinstance(module, nn.Embedding):
            plain = nn.Embedding(module.num_embeddings, module.embedding_dim, padding_idx=module.padding_idx,
                                 max_norm=module.max_norm, norm_type=module.norm_type,
                                 scale_grad_by_freq=module.scale_grad_by_freq, sparse=module.sparse, device="meta")
        else:
            plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
            plain.bias = module.bias
        plain.weight = weight
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, plain)
    return model


def _load_plain(folder: Path, adapter: Path | None, dtype: torch.dtype | None, device: torch.device):
    model = from_hf_config(folder)
    load_hf_weights(model, folder, dtype=dtype, device=device)
    if adapter is not None:
        _add_adapter(model, adapter)
    return model


def _add_adapter(model, adapter: Path) -> None:
    if is_llama_adapter(adapter):
        load_llama_adapter(model, adapter)
        return
    load_peft_adapter(model, adapter, fused_projections=format_for(model.config).fused_projections)


def _base_hint(adapter: Path) -> str:
    """'; its base is X' from an adapter's config, when it names one."""
    for name, key in ((PEFT_CONFIG, "base_model_name_or_path"), (LLAMA_ADAPTER_CONFIG, "base_model_name_or_path")):
        base = _read_json(adapter / name).get(key)
        if base:
            return f" (its adapter names the base {base})"
    return ""


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
