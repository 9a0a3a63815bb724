"""Post-training weight-only quantization of a model folder, through torchao.

    tune run quantize --config quantization checkpoint_dir=out/final/merged              # int8, CPU or GPU
    tune run quantize --config quantization checkpoint_dir=/tmp/Llama-3.2-1B-Instruct \
        adapter_dir=out/final/adapter output_dir=/tmp/llama-tuned-int8                 # base + adapter
    tune run quantize --config quantization checkpoint_dir=out/final/merged scheme=int4 device=cuda

    tune run quantize --config quantization checkpoint_dir=out/final \
        quantizer._component_=tunelib.quantization.Int8DynActInt4WeightQATQuantizer quantizer.groupsize=256

int8: one int8 per weight and one scale per output row, on CPU or CUDA. int4: 4-bit weights
in groups of group_size inputs, CUDA and bf16 only (torchao's tinygemm kernels). A `quantizer`
(torchtune's key; the one a QAT run trained with) quantizes as it says instead: int8 dynamic
activations and int4 weights (Int8DynActInt4WeightQATQuantizer, CPU and CUDA), exactly what QAT
simulated, or int4 weight-only (Int4WeightOnlyQATQuantizer, as scheme=int4). The linear layers
inside decoder layers are quantized; embeddings, output layer and norms are not.
The output is a Hugging Face folder of torchao safetensors (no pickles) that
`tune run generate`, `tune run eleuther_eval`, `tune chat` and transformers
(`AutoModelForCausalLM.from_pretrained`, with torchao installed) load.
"""

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tunelib.config.rules import device_problems
from tunelib.config.schema import REQUIRED, Component, component, setting
from tunelib.config.torchtune_inference import TorchtuneInferenceKeys
from tunelib.errors import ConfigError

NAMES = ("quantize",)
CONFIGS = ("quantization",)
DISTRIBUTED = False


@dataclass(kw_only=True)
class _QuantizeSettings:
    """Keys of a quantization config."""

    checkpoint_dir: str = setting(REQUIRED, "The model folder to quantize (HF, a full or merged fine-tune).")
    adapter_dir: str | None = setting(None, "A LoRA/DoRA (PEFT) adapter folder merged in before quantizing.")
    output_dir: str | None = setting(None, "Where the quantized folder goes (default: <checkpoint_dir>-<scheme> beside it); must not exist yet.")
    scheme: Literal["int8", "int4"] | None = setting(None, "int8 (CPU and CUDA; null means int8 unless a quantizer is given) or int4 (CUDA, bf16).")
    group_size: int | None = setting(None, "int4: inputs sharing one scale and zero point (32, 64, 128 or 256; null: 128).")
    device: str = setting("auto", "Where to quantize: cuda, cpu, cuda:N or auto (cuda when available).")
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = setting("auto", "Precision of the unquantized parts and of the computation (int4: bf16).")
    max_shard_size: int = setting(5 * 1024**3, "Largest safetensors file, in bytes.")

    @classmethod
    def value_problems(cls, cfg: dict) -> list[str]:
        """A device torch knows, and one way of saying how to quantize, checked with the config so
        `tune validate` sees them too."""
        problems = device_problems(cfg)
        if cfg.get("quantizer") is not None:
            problems += [f"{key}={cfg[key]} and quantizer both say how to quantize; remove {key}"
                         for key in ("scheme", "group_size") if cfg.get(key) is not None]
        elif cfg.get("group_size") is not None and cfg.get("scheme") != "int4":
            problems.append(f"group_size={cfg['group_size']} is read only with scheme=int4; set scheme=int4 or remove it")
        return problems


@dataclass(kw_only=True)
class QuantizeSettings(TorchtuneInferenceKeys, _QuantizeSettings):
    """Its own keys, then torchtune's model and checkpointer nodes (torchtune's quantization.yaml validates)."""

    output_dir: str | None = setting(None, "Where the quantized folder goes (default: <checkpoint_dir>-<scheme> beside it); must not exist yet.")
    quantizer: Component | None = component("What to quantize to instead of scheme: the quantizer a QAT run trained with, e.g. tunelib.quantization.Int8DynActInt4WeightQATQuantizer (torchtune.training.quantization names too) with its groupsize.", default=None)
    seed: int | None = setting(None, "torchtune's key: quantizing draws no random numbers, so any value gives the same folder.")

    @classmethod
    def value_problems(cls, cfg: dict) -> list[str]:
        # torchtune's inference keys refuse a quantizer; here it is what the recipe does.
        return _QuantizeSettings.value_problems(cfg) + cls.torchtune_problems({**cfg, "quantizer": None})


SCHEMA = QuantizeSettings


def main(cfg) -> int:
    from tunelib.checkpoint import hf_state_dict
    from tunelib.config import instantiate
    from tunelib.generation import load_model
    from tunelib.generation.torchtune_form import honour_torchtune_keys
    from tunelib.generation.loading import (is_llama_adapter, resolve_adapter_folder, resolve_device, resolve_dtype,
                                            resolve_model_folder)
    from tunelib.models import read_hf_config
    from tunelib.models.registry import format_for
    from tunelib.peft import merged_state_dict
    from tunelib.quantization import qat, torchao_folder, weight_only

    honour_torchtune_keys(cfg, instantiate)  # torchtune's model and checkpointer nodes, when the config has them
    source = resolve_model_folder(cfg.checkpoint_dir)
    if torchao_folder.quantization_name(source):
        raise ConfigError(f"{source} is quantized already; quantize the unquantized model")
    quantizer = instantiate(cfg.quantizer) if cfg.quantizer is not None else None
    scheme = quantizer.scheme if quantizer is not None else cfg.scheme or "int8"
    group_size = quantizer.groupsize if quantizer is not None else cfg.group_size or 128
    device = resolve_device(cfg.device)
    dtype = resolve_dtype("bf16" if scheme == "int4" and cfg.dtype == "auto" else cfg.dtype, source, device)
    source_config = read_hf_config(source)
    if source_config.num_experts is not None:
        raise ConfigError(f"{source} is a mixture-of-experts model ({source_config.architecture}); quantize does not "
                          "take one yet (its experts and routers need their own scheme): use the bf16 folder")
    fused = bool(format_for(source_config).fused_projections)
    if scheme in weight_only.SCHEMES:  # int8, int4; a quantizer's 8da4w runs anywhere
        weight_only.check_scheme(scheme, group_size, device, dtype, fused_projections=fused)

    if cfg.adapter_dir and is_llama_adapter(resolve_adapter_folder(cfg.adapter_dir)):
        raise ConfigError(f"adapter_dir {cfg.adapter_dir} is a LLaMA-Adapter, whose prompts cannot be folded into "
                          "weights; quantize takes LoRA/DoRA adapters (or a v2 run's final/merged folder)")
    out = _output_dir(cfg, source, scheme)

    # Unmerged: merged_state_dict folds the adapter itself and says whether tied embeddings come apart.
    loaded = load_model(source, adapter_dir=cfg.adapter_dir, dtype=cfg.dtype if dtype is None else _name(dtype),
                        device=device, merge_adapter=False)
    if quantizer is not None:  # QAT trained these groups: no weight may be left unquantized
        for name, linear in qat.target_linears(loaded.model).items():
            quantizer.check_inputs(name, linear.in_features)
    print(f"Quantizing {loaded.describe()} to {scheme} on {device}...", flush=True)
    weights, updates = merged_state_dict(loaded.model)  # plain weights, any adapter folded in
    config = loaded.model.config
    if updates.get("tie_word_embeddings") is False:
        config = dataclasses.replace(config, tie_word_embeddings=False)
    torchao_config = quantizer.torchao_config() if quantizer is not None else weight_only.torchao_config(scheme, group_size)
    tensors = weight_only.quantize_weights(hf_state_dict(weights, config), torchao_config)
    _save(tensors, out, config=config, torchao_config=torchao_config, source_dir=source, config_updates=updates,
          max_shard_size=cfg.max_shard_size)
    print(_summary(weights, out, scheme), flush=True)
    return 0


def _output_dir(cfg, source: Path, scheme: str) -> Path:
    given = Path(cfg.checkpoint_dir).expanduser().absolute()
    out = Path(cfg.output_dir).expanduser() if cfg.output_dir else given.parent / f"{given.name}-{scheme}"
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"output_dir {out} already exists; choose another output_dir or remove it")
    if out.resolve().is_relative_to(source.resolve()):
        raise ConfigError(f"output_dir {out} is inside checkpoint_dir {source}; choose another output_dir")
    return out


def _save(tensors, out: Path, **kwargs) -> None:
    """Write into a temporary folder and rename it, so the output is complete or absent."""
    from tunelib.checkpoint.atomic import output_folder
    from tunelib.quantization import torchao_folder

    with output_folder(out) as tmp:
        torchao_folder.save_quantized(tensors, tmp, **kwargs)


def _name(dtype) -> str:
    import torch

    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def _summary(weights: dict, out: Path, scheme: str) -> str:
    before = sum(t.numel() * t.element_size() for t in weights.values())
    after = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    return (f"Quantized model ({scheme}): {out.resolve()}\n"
            f"  weights: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB on disk\n"
            f"  try it:       tune chat {out.resolve()}\n"
            f"  evaluate:     tune run eleuther_eval --config eleuther_evaluation checkpoint_dir={out.resolve()} tasks=[...]\n"
            f"  transformers: AutoModelForCausalLM.from_pretrained(\"{out.resolve()}\")  # needs torchao")


if __name__ == "__main__":
    from tunelib.config import run_script

    run_script(main, SCHEMA, sys.argv[1:])
