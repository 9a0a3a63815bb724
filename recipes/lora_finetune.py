"""LoRA, DoRA and QLoRA fine-tuning: small adapters train, the base model stays frozen.

    tune run lora_finetune_single_device --config llama3_1/8B_lora
    tune run lora_finetune_single_device --config llama3_1/8B_qlora        # NF4 base weights
    tune run lora_finetune_single_device --config llama3_1/8B_dora
    tune run --nproc_per_node 8 lora_finetune_distributed --config llama3_1/70B_lora
    python recipes/lora_finetune.py --config llama3_1/8B_lora model.lora_rank=64

The model config chooses the method (`lora_attn_modules`, `apply_lora_to_mlp`, `lora_rank`,
`use_dora`, `quantize_base`, ...). Output: `output_dir/final/adapter` (a PEFT folder) and,
unless save_adapter_weights_only=True, `output_dir/final/merged` (an HF model folder).
The loop is `tunelib.training.train`; the assembly, in order, is `tunelib.training.setup`.
"""

import sys

from tunelib.training import train
from tunelib.training.objective_setup import next_token
from tunelib.training.settings import LoRASettings
from tunelib.training.setup import build_run, preflight
from tunelib.training.trained import LORA, Recipe

NAMES = ("lora_finetune_single_device", "lora_finetune_distributed")
CONFIGS = ("*_lora", "*_qlora", "*_dora", "*_qdora", "*_lora_single_device", "*_qlora_single_device",
           "*_dora_single_device", "*_qdora_single_device", "*_lora_tunelib", "*_qlora_tunelib", "*_dora_tunelib")
RECIPE = Recipe("lora_finetune", trains=LORA, objective=next_token)
SCHEMA = LoRASettings


def check(cfg) -> list[str]:
    """What `tune validate` checks beyond the config: the model on meta, optimizer, schedule, loss."""
    return preflight(cfg, RECIPE)


def main(cfg) -> int:
    built = build_run(cfg, RECIPE)
    with built:  # on the way out, whatever happened: loggers, signals, process group, output_dir lock
        train(built.run)
        return built.report(adapter=True, merged=not cfg.save_adapter_weights_only)


if __name__ == "__main__":
    from tunelib.config import run_script

    run_script(main, SCHEMA, sys.argv[1:])
