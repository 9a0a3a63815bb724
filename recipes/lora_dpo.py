"""Preference optimisation with LoRA/DoRA/QLoRA adapters: DPO, IPO, hinge, SimPO, ORPO.

    tune run lora_dpo_single_device --config llama3_1/8B_lora_dpo_single_device
    tune run lora_dpo_single_device --config llama3_1/8B_lora_dpo loss._component_=tunelib.training.SimPOLoss
    tune run --nproc_per_node 8 lora_dpo_distributed --config llama3_1/70B_lora_dpo

The data is chosen/rejected pairs (tunelib.data.preference_dataset, docs/data.md); `loss` picks
the objective (default DPO, beta 0.1). The reference model is the base with the adapters
switched off: no second copy, and the first step's DPO loss is ln 2. Output as from
lora_finetune: `output_dir/final/adapter` (PEFT) and `output_dir/final/merged`.
The loop is `tunelib.training.train`; the objective is tunelib.training.objectives.Preference.
"""

import sys

from tunelib.training import train
from tunelib.training.objective_setup import preference
from tunelib.training.settings import LoRAPreferenceSettings
from tunelib.training.setup import build_run, preflight
from tunelib.training.trained import LORA, Recipe

NAMES = ("lora_dpo_single_device", "lora_dpo_distributed")
CONFIGS = ("*_lora_dpo", "*_lora_dpo_single_device", "*_lora_dpo_tunelib", "*_qlora_dpo", "*_dora_dpo")
RECIPE = Recipe("lora_dpo", trains=LORA, objective=preference)
SCHEMA = LoRAPreferenceSettings


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
