"""Full fine-tuning: every weight of the model trains.

    tune run full_finetune_single_device --config llama3_2/1B_full
    tune run --nproc_per_node 8 full_finetune_distributed --config llama3_1/8B_full
    python recipes/full_finetune.py --config llama3_2/1B_full optimizer_in_bwd=True

Output: `output_dir/final`, a Hugging Face model folder (transformers and vLLM load it as is),
and `output_dir/step_N` checkpoints every save_every_n_steps.
The loop is `tunelib.training.train`; the assembly, in order, is `tunelib.training.setup`.
"""

import sys

from tunelib.training import train
from tunelib.training.objective_setup import next_token
from tunelib.training.settings import FullSettings
from tunelib.training.setup import build_run, preflight
from tunelib.training.trained import FULL, Recipe

NAMES = ("full_finetune_single_device", "full_finetune_distributed")
CONFIGS = ("*_full", "*_full_single_device", "*_full_low_memory", "*_full_multinode", "*_full_tunelib")
RECIPE = Recipe("full_finetune", trains=FULL, objective=next_token)
SCHEMA = FullSettings


def check(cfg) -> list[str]:
    """What `tune validate` checks beyond the config: the model on meta, optimizer, schedule, loss."""
    return preflight(cfg, RECIPE)


def main(cfg) -> int:
    built = build_run(cfg, RECIPE)
    with built:  # on the way out, whatever happened: loggers, signals, process group, output_dir lock
        train(built.run)
        return built.report(adapter=False, merged=False)


if __name__ == "__main__":
    from tunelib.config import run_script

    run_script(main, SCHEMA, sys.argv[1:])
