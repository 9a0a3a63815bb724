"""LLaMA-Adapter v1 and v2 fine-tuning: learned prompts (v2: also scales, biases, norms) train, the base stays frozen.

    tune run adapter_finetune_single_device --config llama3_1/8B_adapter
    tune run adapter_finetune_single_device --config llama3_1/8B_adapter_v2
    tune run adapter_finetune_single_device --config llama3_1/8B_adapter model.quantize_base=True   # NF4 base
    tune run --nproc_per_node 8 adapter_finetune_distributed --config llama3_1/70B_adapter_v2
    python recipes/adapter_finetune.py --config llama3_2/1B_adapter model.adapter_start_layer=4

The model config chooses the method (`adapter: v1|v2`, `adapter_prompt_length`,
`adapter_start_layer`, `quantize_base`). Output: `output_dir/final/adapter` (tunelib's
LLaMA-Adapter format; load it with `tunelib.peft.load_llama_adapter`) and, for v2 with
fold_adapter_v2=True, `output_dir/final/merged` (an HF model folder with the scales and biases
folded in; prompts cannot be folded, so they are left out).
The loop is `tunelib.training.train`; the assembly, in order, is `tunelib.training.setup`.
"""

import sys

from tunelib.peft import fold_leaves_out
from tunelib.training import train
from tunelib.training.objective_setup import next_token
from tunelib.training.settings import AdapterSettings
from tunelib.training.setup import build_run, preflight
from tunelib.training.trained import LLAMA_ADAPTER, Recipe

NAMES = ("adapter_finetune_single_device", "adapter_finetune_distributed")
CONFIGS = ("*_adapter", "*_adapter_v2")
RECIPE = Recipe("adapter_finetune", trains=LLAMA_ADAPTER, objective=next_token)
SCHEMA = AdapterSettings


def check(cfg) -> list[str]:
    """What `tune validate` checks beyond the config: the model on meta, optimizer, schedule, loss."""
    return preflight(cfg, RECIPE)


def main(cfg) -> int:
    built = build_run(cfg, RECIPE)
    with built:  # on the way out, whatever happened: loggers, signals, process group, output_dir lock
        left_out = fold_leaves_out(built.run.model) if cfg.fold_adapter_v2 else []
        if left_out and built.run.dist.is_main:
            print(f"fold_adapter_v2: merged/ will leave out {'; '.join(left_out)}; adapter/ holds the exact model",
                  flush=True)
        train(built.run)
        return built.report(adapter=True, merged=cfg.fold_adapter_v2)


if __name__ == "__main__":
    from tunelib.config import run_script

    run_script(main, SCHEMA, sys.argv[1:])
