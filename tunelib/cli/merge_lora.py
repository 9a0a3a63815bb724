"""`tune merge_lora --adapter DIR [--base DIR] --output-dir DIR`: fold a LoRA/DoRA adapter into its base.

Writes a plain Hugging Face model folder (config, safetensors, generation config, tokenizer
files of the base) that transformers, vLLM and `tune run generate` load without PEFT. The
adapter may be one of ours (a run's `final/adapter`, or the run's `final/` folder) or any PEFT
LoRA/DoRA adapter for a supported model. Each weight becomes W + s·BA (DoRA: rescaled to its
magnitude), computed in fp32 and stored in the base's dtype unless --dtype says otherwise.
--base defaults to the base model the adapter names, when that is a folder on this machine.
The folder is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tunelib.errors import CheckpointError, UserError


def add_parser(sub) -> None:
    p = sub.add_parser("merge_lora", aliases=["merge"], help="merge a LoRA/DoRA adapter into its base model",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapter", required=True, metavar="DIR",
                   help="the adapter folder (adapter_config.json + adapter_model.safetensors), or a run's final/")
    p.add_argument("--base", default=None, metavar="DIR",
                   help="the base model folder (default: the adapter's base_model_name_or_path, if it is a folder)")
    p.add_argument("--output-dir", required=True, metavar="DIR", help="where the merged model goes (must not exist, or be empty)")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="dtype of the merged weights (default: the base's)")
    p.add_argument("--max-shard-size", default="5GB", help='largest safetensors file, e.g. "5GB" (default)')
    p.set_defaults(func=run)


def run(args) -> int:
    from tunelib.generation.loading import is_llama_adapter, resolve_adapter_folder, resolve_model_folder

    adapter = resolve_adapter_folder(args.adapter)
    if is_llama_adapter(adapter):
        raise UserError(f"{adapter} is a LLaMA-Adapter; merge_lora merges LoRA/DoRA adapters (a LLaMA-Adapter v2 "
                        "run writes its folded model to final/merged itself; v1 cannot be folded)")
    base = resolve_model_folder(args.base if args.base else _named_base(adapter))
    out = Path(args.output_dir).expanduser()
    _check_output(out, base, adapter)
    print(f"Merging {adapter} into {base}...", flush=True)
    merge(base, adapter, out, dtype=args.dtype, max_shard_size=args.max_shard_size)
    print(f"Merged model: {out.resolve()}\n"
          f"  try it:       tune chat {out}\n"
          f"  transformers: AutoModelForCausalLM.from_pretrained(\"{out.resolve()}\")\n"
          f"  vLLM:         vllm serve {out.resolve()}", flush=True)
    return 0


def merge(base: Path, adapter: Path, out: Path, *, dtype: str = "auto", max_shard_size: str | int = "5GB") -> Path:
    """Write `base` with `adapter` merged into it as an HF model folder at `out` (complete or absent)."""
    from tunelib.checkpoint import save_hf_folder
    from tunelib.checkpoint.atomic import output_folder
    from tunelib.generation.loading import DTYPES, checkpoint_dtype, load_model
    from tunelib.peft import merged_state_dict

    if dtype == "auto":
        # The base's own dtype, fp16 included (load_model's auto would widen fp16 to fp32 on the CPU).
        dtype = next((name for name, d in DTYPES.items() if d == checkpoint_dtype(base)), "auto")
    # Unmerged: merged_state_dict folds the adapter itself and says whether tied embeddings come apart.
    loaded = load_model(base, adapter_dir=adapter, dtype=dtype, device="cpu", merge_adapter=False)
    weights, updates = merged_state_dict(loaded.model)
    with output_folder(out) as tmp:
        save_hf_folder(weights, tmp, source_dir=base, config=loaded.model.config, max_shard_size=max_shard_size,
                       config_updates=updates)
    return out


def _named_base(adapter: Path) -> str:
    """The adapter's base_model_name_or_path, when it is a folder here."""
    try:
        named = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        named = None
    if named and Path(named).expanduser().is_dir():
        return named
    where = f"; it names {named!r}, which is not a folder here (tune download it first)" if named else ""
    raise UserError(f"give the base model folder with --base{where}")


def _check_output(out: Path, base: Path, adapter: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--output-dir {out} already exists and is not empty; choose another folder")
    resolved = out.resolve()
    for source in (base, adapter):
        if resolved == source.resolve() or resolved.is_relative_to(source.resolve()):
            raise CheckpointError(f"--output-dir {out} is inside {source}; write the merged model elsewhere")
    if not out.parent.exists():
        out.parent.mkdir(parents=True)
