"""Knowledge distillation: a student learns from a frozen teacher of the same vocabulary.

    tune run knowledge_distillation_single_device --config qwen2/1.5_to_0.5B_KD_lora_single_device
    tune run --nproc_per_node 8 knowledge_distillation_distributed --config llama3_2/8B_to_1B_KD_lora_distributed

loss = (1 - kd_ratio) * cross-entropy + kd_ratio * kd_loss (forward KL by default; reverse,
symmetric KL and JSD too), both per trained token, logged as loss, class_loss and kd_loss. The
student trains LoRA/DoRA adapters when its model node has adapter keys, else every weight; the
teacher (teacher_model, teacher_checkpoint_dir) is frozen and sharded like the student.
Output as from lora_finetune or full_finetune. The loop is `tunelib.training.train`.
"""

import sys

from tunelib.training import train
from tunelib.training.objective_setup import distillation
from tunelib.training.settings import DistillationSettings
from tunelib.training.setup import build_run, preflight
from tunelib.training.trained import FULL, LORA, Recipe

NAMES = ("knowledge_distillation_single_device", "knowledge_distillation_distributed")
CONFIGS = ("*_KD_lora_single_device", "*_KD_lora_distributed", "*_KD_lora", "*_KD_full")
RECIPE = Recipe("knowledge_distillation", trains=(LORA, FULL), objective=distillation)
SCHEMA = DistillationSettings


def check(cfg) -> list[str]:
    """What `tune validate` checks beyond the config: both models on meta, optimizer, schedule, losses."""
    return preflight(cfg, RECIPE)


def main(cfg) -> int:
    built = build_run(cfg, RECIPE)
    with built:  # on the way out, whatever happened: loggers, signals, process group, output_dir lock
        train(built.run)
        adapter = built.trains.adapters
        return built.report(adapter=adapter, merged=adapter and not cfg.save_adapter_weights_only)


if __name__ == "__main__":
    from tunelib.config import run_script

    run_script(main, SCHEMA, sys.argv[1:])
