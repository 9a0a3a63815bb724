"""PEFT adapter folders: `adapter_config.json` + `adapter_model.safetensors`, in and out.

Our parameter names are Hugging Face's, so a PEFT key is `base_model.model.` + our name and
no tensor is reshaped or permuted. `PeftModel.from_pretrained(base, folder)` loads what
`save_peft_adapter` writes, and `load_peft_adapter` loads LoRA and DoRA adapters that PEFT
wrote (its target list or regex, rank/alpha patterns, rsLoRA, DoRA, layers_to_transform,
exclude_modules).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from tunelib.checkpoint.safe_load import load_weights_only
from tunelib.errors import CheckpointError
from tunelib.models.moe import GroupedLinear
from tunelib.peft import experts, targets
from tunelib.peft.fused import fuse_for_peft, peft_module_name, split_from_peft
from tunelib.peft.lora import LoraSpec
from tunelib.peft.params import LORA_MODULES, adapter_owner, adapter_state_dict, is_adapter_key, lora_modules, put_value
from tunelib.peft.swap import add_adapters

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
LEGACY_WEIGHTS_NAME = "adapter_model.bin"
PREFIX = "base_model.model."
PEFT_DEFAULT_ALPHA = 8  # LoraConfig's default, used when a config leaves lora_alpha out

# LoraConfig settings that change what the adapter computes in ways tunelib does not implement.
_UNSUPPORTED = (
    "fan_in_fan_out", "lora_bias", "modules_to_save", "layer_replication", "trainable_token_indices",
    "target_parameters", "use_qalora", "alora_invocation_tokens", "velora_config", "monteclora_config",
    "use_bdlora", "arrow_config", "kasa_config", "megatron_config", "ensure_weight_tying",
)


# ---------------------------------------------------------------- writing


def adapter_config(model: nn.Module, base_model_name_or_path: str | None = None) -> dict:
    """The `adapter_config.json` content describing `model`'s adapters, read off its modules.

    Targets are written as leaf names (`["q_proj", "v_proj"]`) when every module with such a
    name is adapted, otherwise as full module names. Raises ValueError if the model has no
    adapter, or its adapters mix dropout, rsLoRA or DoRA settings (PEFT cannot express that).
    """
    specs = {name: module.spec for name, module in lora_modules(model).items()}
    if not specs:
        raise ValueError("the model has no LoRA adapter to describe")
    shared = {(s.dropout, s.use_rslora, s.use_dora) for s in specs.values()}
    if len(shared) > 1:
        raise ValueError("adapters with different dropout, rsLoRA or DoRA settings cannot share one PEFT config")
    dropout, use_rslora, use_dora = shared.pop()
    rank = Counter(s.rank for s in specs.values()).most_common(1)[0][0]
    alpha = Counter(s.alpha for s in specs.values()).most_common(1)[0][0]
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": rank,
        "lora_alpha": _plain_number(alpha),
        "lora_dropout": dropout,
        "target_modules": _target_modules(model, list(specs)),
        "bias": "none",
        "fan_in_fan_out": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    rank_pattern = {name: s.rank for name, s in specs.items() if s.rank != rank}
    alpha_pattern = {name: _plain_number(s.alpha) for name, s in specs.items() if s.alpha != alpha}
    if rank_pattern:
        config["rank_pattern"] = rank_pattern
    if alpha_pattern:
        config["alpha_pattern"] = alpha_pattern
    # Written only when true, so that PEFT versions without these keys still load plain LoRA.
    if use_rslora:
        config["use_rslora"] = True
    if use_dora:
        config["use_dora"] = True
    return config


def save_peft_adapter(model: nn.Module, out_dir: str | Path, *, base_model_name_or_path: str | None = None,
                      fused_projections: dict[str, Sequence[str]] | None = None) -> Path:
    """Write `model`'s adapters as a PEFT folder (config + safetensors) into `out_dir`; return it.

    The folder loads with `PeftModel.from_pretrained(base_model, out_dir)`. Tensors keep their
    dtype and are copied to the CPU. `fused_projections` (e.g. `PHI3_FUSED_PROJECTIONS`) is
    for base checkpoints that fuse projections our model keeps apart: their adapters are
    written as one exact LoRA on the fused module.
    """
    out_dir = Path(out_dir)
    config = adapter_config(model, base_model_name_or_path)
    tensors = adapter_state_dict(model)
    if fused_projections:
        config, tensors = fuse_for_peft(model, config, tensors, fused_projections)
        config = {k: v for k, v in config.items() if v != {}}
    tensors = experts.unstack(model, tensors)  # one LoRA per expert, under the checkpoint's names
    tensors = {PREFIX + name: t.to("cpu").contiguous().clone() for name, t in tensors.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out_dir / WEIGHTS_NAME, metadata={"format": "pt"})
    (out_dir / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return out_dir


def _plain_number(x: float):
    return int(x) if float(x).is_integer() else x


def _target_modules(model: nn.Module, adapted: list[str]) -> list[str]:
    # Stacked experts are named as the checkpoint names expert 0 (Mixtral: `...experts.0.w1`).
    adapted = [experts.peft_name(model, name) for name in adapted]
    leaves = sorted({name.rsplit(".", 1)[-1] for name in adapted})
    with_leaves = [theirs for theirs in (experts.peft_name(model, name) for name, _ in model.named_modules())
                   if theirs.rsplit(".", 1)[-1] in leaves]
    return leaves if sorted(with_leaves) == sorted(adapted) else sorted(adapted)


# ---------------------------------------------------------------- reading


def read_adapter_config(adapter_dir: str | Path) -> dict:
    """Read and check a PEFT `adapter_config.json`; raise CheckpointError (one line) if unusable."""
    path = Path(adapter_dir) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{adapter_dir}: no {CONFIG_NAME}; pass a PEFT adapter folder")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object, not a {type(config).__name__}; copy the adapter "
                              "folder again")
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise CheckpointError(
            f"{path}: peft_type {peft_type!r} is not supported; tunelib loads LoRA and DoRA adapters (peft_type LORA)"
        )
    for key in _UNSUPPORTED:
        if config.get(key):
            raise CheckpointError(f"{path}: {key}={config[key]!r} is not supported by tunelib's LoRA")
    if config.get("bias", "none") != "none":
        raise CheckpointError(f"{path}: bias={config['bias']!r} is not supported; tunelib's LoRA trains no bias")
    if not config.get("target_modules"):
        raise CheckpointError(f"{path}: target_modules is empty, so the adapter applies to nothing")
    _check_numbers(config, path)
    return config


def _check_numbers(config: dict, path: Path) -> None:
    # PEFT leaves a key out to mean its default; a null or a string in its place is a damaged or
    # hand-edited file, which would otherwise fail deep inside the model swap.
    rank, alpha = config.get("r", 8), config.get("lora_alpha")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        problem = f"r is {json.dumps(rank)}; it must be the adapter's rank, a whole number of 1 or more"
    elif alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))):
        problem = f"lora_alpha is {json.dumps(alpha)}; it must be a number"
    else:
        return
    raise CheckpointError(f"{path}: {problem} (the file is damaged or was edited by hand: copy the adapter "
                          "folder again)")


def load_peft_adapter(model: nn.Module, adapter_dir: str | Path, *,
                      fused_projections: dict[str, Sequence[str]] | None = None) -> nn.Module:
    """Put the LoRA/DoRA adapter of a PEFT folder onto `model` (in place) and return it.

    Modules are chosen as PEFT chooses them; a module that already has an adapter with the
    same settings (a model built with the matching `apply_peft`) just gets the weights.
    Base weights stored in the folder (PEFT saves `embed_tokens`/`lm_head` when they are
    targets) are loaded too. With `fused_projections` (e.g. `PHI3_FUSED_PROJECTIONS`), an
    adapter made for a checkpoint with fused projections is split exactly onto our parts.
    Raises CheckpointError for an unsupported adapter, a target that matches nothing, and a
    missing, unexpected or wrongly shaped tensor.
    """
    config = read_adapter_config(adapter_dir)
    specs = _specs(model, config, adapter_dir, fused_projections)
    fresh = {name: spec for name, spec in specs.items() if not isinstance(model.get_submodule(name), LORA_MODULES)}
    for name in specs.keys() - fresh.keys():
        _check_same_spec(name, model.get_submodule(name).spec, specs[name], adapter_dir)
    add_adapters(model, fresh)
    tensors = experts.stack(model, _read_weights(adapter_dir), prefix=PREFIX)
    if fused_projections:
        tensors = split_from_peft(model, tensors, fused_projections, prefix=PREFIX)
    _load_tensors(model, specs, tensors, adapter_dir)
    return model


def _specs(model: nn.Module, config: dict, adapter_dir, fused_projections=None) -> dict[str, LoraSpec]:
    rank = int(config.get("r", 8))
    alpha = float(config.get("lora_alpha") or PEFT_DEFAULT_ALPHA)
    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    specs = {}
    for name in _matched_modules(model, config, fused_projections):
        # Targets and patterns name the modules of the checkpoint the adapter was made for.
        peft_name = peft_module_name(experts.peft_name(model, name), fused_projections)
        specs[name] = LoraSpec(
            rank=int(_pattern_value(rank_pattern, peft_name, rank)),
            alpha=float(_pattern_value(alpha_pattern, peft_name, alpha)),
            dropout=float(config.get("lora_dropout") or 0.0),
            use_rslora=bool(config.get("use_rslora")),
            use_dora=bool(config.get("use_dora")),
        )
    if not specs:
        raise CheckpointError(
            f"{adapter_dir}: target_modules {config['target_modules']!r} match no module of this {type(model).__name__}"
        )
    return specs


def _pattern_value(patterns: dict, name: str, default):
    # PEFT's rule: the first pattern that matches the end of the module name wins.
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", name):
            return value
    return default


def _matched_modules(model: nn.Module, config: dict, fused_projections) -> list[str]:
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.Embedding, GroupedLinear)) or _inside_adapter(name):
            continue
        peft_name = peft_module_name(experts.peft_name(model, name), fused_projections)
        if _excluded(config.get("exclude_modules"), peft_name):
            continue
        if _targeted(config, peft_name, module):
            names.append(name)
    return names


def _inside_adapter(name: str) -> bool:
    # lora_A / lora_B are nn.Linear children of an adapted module, never targets themselves.
    return any(part in ("lora_A", "lora_B") for part in name.split("."))


def _excluded(exclude, name: str) -> bool:
    if not exclude:
        return False
    if isinstance(exclude, str):
        return re.fullmatch(exclude, name) is not None
    return name in exclude or any(name.endswith(f".{e}") for e in exclude)


def _targeted(config: dict, name: str, module: nn.Module) -> bool:
    target = config["target_modules"]
    if isinstance(target, str):
        if target.lower() == "all-linear":
            return isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] != targets.OUTPUT
        return re.fullmatch(target, name) is not None
    if not (name in target or any(name.endswith(f".{t}") for t in target)):
        return False
    return _in_transformed_layer(config, name)


def _in_transformed_layer(config: dict, name: str) -> bool:
    layers = config.get("layers_to_transform")
    if layers is None or layers == []:
        return True
    patterns = config.get("layers_pattern") or []
    patterns = [patterns] if isinstance(patterns, str) else patterns
    if patterns:
        match = next(filter(None, (re.match(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", name) for p in patterns)), None)
    else:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name)
    if match is None:
        return False
    index = int(match["idx"])
    return index == layers if isinstance(layers, int) else index in layers


def _check_same_spec(name: str, have: LoraSpec, want: LoraSpec, adapter_dir) -> None:
    if (have.rank, have.use_dora) != (want.rank, want.use_dora) or abs(have.scaling - want.scaling) > 1e-12:
        raise CheckpointError(
            f"{adapter_dir}: {name} already has an adapter (rank {have.rank}, scale {have.scaling:g}, "
            f"DoRA {have.use_dora}) that differs from the folder's (rank {want.rank}, scale {want.scaling:g}, "
            f"DoRA {want.use_dora})"
        )


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, on the CPU.

    Raises:
        CheckpointError: the file is cut short or is not safetensors.
    """
    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot read {path}: {str(e).splitlines()[0]}; the file is damaged or incomplete "
                              "(copy the adapter folder again)") from None


def _read_weights(adapter_dir) -> dict[str, torch.Tensor]:
    folder = Path(adapter_dir)
    if (folder / WEIGHTS_NAME).is_file():
        return read_safetensors(folder / WEIGHTS_NAME)
    if (folder / LEGACY_WEIGHTS_NAME).is_file():
        # Old PEFT folders; weights_only refuses anything but tensors, so no code is run.
        return load_weights_only(folder / LEGACY_WEIGHTS_NAME)
    raise CheckpointError(f"{adapter_dir}: no {WEIGHTS_NAME} (or {LEGACY_WEIGHTS_NAME}) next to {CONFIG_NAME}")


def _our_name(key: str, adapter_dir) -> str:
    if not key.startswith(PREFIX):
        raise CheckpointError(f"{adapter_dir}: key {key!r} does not start with {PREFIX!r}; not a PEFT adapter file")
    name = key[len(PREFIX):].replace(".base_layer.", ".")
    # Some PEFT versions store the DoRA magnitude with a `.weight` suffix.
    return name.removesuffix(".weight") if name.endswith("lora_magnitude_vector.weight") else name


def _load_tensors(model: nn.Module, specs: dict[str, LoraSpec], tensors: dict[str, torch.Tensor], adapter_dir) -> None:
    params = dict(model.named_parameters(remove_duplicate=False))
    expected = {name for name in params if is_adapter_key(name) and adapter_owner(name) in specs}
    loaded = set()
    for key, tensor in tensors.items():
        name = _our_name(key, adapter_dir)
        if name not in params:
            raise CheckpointError(
                f"{adapter_dir}: {key} has no place in this {type(model).__name__} (no parameter {name})"
            )
        if tuple(tensor.shape) != tuple(params[name].shape):
            raise CheckpointError(
                f"{adapter_dir}: {key} has shape {tuple(tensor.shape)} but the model's {name} is "
                f"{tuple(params[name].shape)}; the adapter was made for a different model or rank"
            )
        put_value(model, name, tensor)
        loaded.add(name)
    missing = sorted(expected - loaded)
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise CheckpointError(f"{adapter_dir}: the adapter file has no tensor for {missing[0]}{more}")
