"""Preference optimisation of every weight: DPO, IPO, hinge, SimPO, ORPO.

    tune run full_dpo_single_device --config llama3_2/1B_full_dpo
    tune run --nproc_per_node 8 full_dpo_distributed --config llama3_1/8B_full_dpo
    tune run full_dpo_single_device --config llama3_2/1B_full_dpo precompute_reference_log_probs=True

The reference model is a frozen copy of the starting weights, sharded like the trained one; with
precompute_reference_log_probs=True its log-probs are worked out once before training instead,
so only one model is held. SimPO and ORPO need no reference. Output: `output_dir/final`, a
Hugging Face model folder. The loop is `tunelib.training.train`.
"""

import sys

from tunelib.training import train
from tunelib.training.objective_setup import preference
from tunelib.training.settings import FullPreferenceSettings
from tunelib.training.setup import build_run, preflight
from tunelib.training.trained import FULL, Recipe

NAMES = ("full_dpo_single_device", "full_dpo_distributed")
CONFIGS = ("*_full_dpo", "*_full_dpo_single_device", "*_full_dpo_tunelib")
RECIPE = Recipe("full_dpo", trains=FULL, objective=preference)
SCHEMA = FullPreferenceSettings


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
