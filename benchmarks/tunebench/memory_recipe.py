"""A tunelib recipe for `benchmarks/memory.py`: the LoRA or full fine-tuning recipe, with the peak
resident memory of each phase (load, train, save) written to `output_dir/memory_rank<r>.json`,
with the resident memory before loading and before the final save, and the peak while the
weights are read (`weights`, against `before_weights`).

    tune run ./benchmarks/tunebench/memory_recipe.py --config CONFIG method=lora

The phases are cut by resetting the kernel's high-water mark of resident memory (VmHWM,
through /proc/self/clear_refs) at each boundary, so each figure is that phase's own peak.
"""

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tunelib.data  # noqa: F401 - imported here, so its cost is not counted as loading (setup imports it late)
from tunelib.training import HFCheckpointer
from tunelib.config.schema import setting
from tunelib.training import train
from tunelib.training.settings import LoRASettings
from tunelib.training.objective_setup import next_token
from tunelib.training.setup import build_run
from tunelib.training.trained import FULL, LORA, Recipe

NAMES = ("memory_benchmark",)


@dataclass(kw_only=True)
class MemorySettings(LoRASettings):
    method: Literal["lora", "full"] = setting("lora", "What trains: LoRA adapters or every weight.")


SCHEMA = MemorySettings


def peak_gib() -> float:
    """This process's peak resident memory since the last reset, in GiB."""
    return _status_gib("VmHWM")


def _status_gib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024**2
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def current_gib() -> float:
    """This process's resident memory now, in GiB."""
    return _status_gib("VmRSS")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def _measure_weight_loading(phases: dict) -> None:
    """Record the resident memory before the weights are read (`before_weights`) and the peak
    while they are (`weights`), around the checkpointer's `load_model`."""
    load_model = HFCheckpointer.load_model

    def measured(self, *args, **kwargs):
        reset_peak()
        phases["before_weights"] = current_gib()
        try:
            return load_model(self, *args, **kwargs)
        finally:
            phases["weights"] = peak_gib()

    HFCheckpointer.load_model = measured


def main(cfg) -> int:
    phases = {"before_load": current_gib()}
    _measure_weight_loading(phases)
    recipe = Recipe(f"{cfg.method}_finetune", trains=LORA if cfg.method == "lora" else FULL, objective=next_token)
    built = build_run(cfg, recipe)  # "load" includes the imports, as a user's process does
    phases["load"] = peak_gib()
    reset_peak()
    save = built.run.save

    def timed_save(run, final):
        if final:
            phases["train"] = peak_gib()
            reset_peak()
            phases["before_save"] = current_gib()
        return save(run, final)

    built.run.save = timed_save
    with built:
        train(built.run)
        phases["save"] = peak_gib()
        rank = int(os.environ.get("RANK", 0))
        (Path(cfg.output_dir) / f"memory_rank{rank}.json").write_text(json.dumps(phases))
        return built.report(adapter=cfg.method == "lora", merged=cfg.method == "lora")


if __name__ == "__main__":
    from tunelib.config import run_script

    run_script(main, SCHEMA, sys.argv[1:])
