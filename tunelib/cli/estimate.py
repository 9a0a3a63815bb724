"""`tune estimate RECIPE --config CONFIG [OVERRIDES] [--nproc_per_node N]`: peak memory and step time, before a run.

The config is checked as `tune run RECIPE` checks it (a config the run would refuse gets the
same one-line error), the model is built on the meta device, and nothing is loaded. Printed:
the peak memory per device, part by part (baseline, weights, trained weights, gradients,
optimizer states, activations, the loss's chunks, FSDP's all-gather buffers), the time per
step at an assumed utilisation, whether it fits the device this machine has, and if not, one
line per change that would help. How each part is counted: tunelib/training/estimate.py.

Options:
    --nproc_per_node N      estimate for FSDP2 over N processes (default: WORLD_SIZE, else 1)
    --allow-module MODULE   let `_component_` import from MODULE (repeatable)
"""

from __future__ import annotations

import os

from tunelib import registry
from tunelib.cli import recipe_modules
from tunelib.cli.words import config_and_overrides, take_options
from tunelib.config import allow_module, build_config
from tunelib.errors import UserError, program

USAGE = "estimate RECIPE --config CONFIG [OVERRIDES...] [--nproc_per_node N] [--allow-module MODULE]"


def add_parser(sub) -> None:
    # Shown by `tune --help`; main() hands the words to run_words, since overrides look like options.
    sub.add_parser("estimate", help="peak memory per device and time per step of a run, before it runs",
                   add_help=False)


def run_words(words: list[str]) -> int:
    """Run `tune estimate` with the words after `estimate`; return the exit code.

    Raises:
        UserError: no recipe, a bad --nproc_per_node, or what `tune run` would refuse in the config.
    """
    if not words or words[0] in ("-h", "--help"):
        print(f"usage: {program()} {USAGE}\n\n{__doc__.strip()}")
        return 0
    options, words = take_options(words, ("allow-module", "nproc_per_node"))
    for module in options["allow-module"]:
        allow_module(module)
    world_size = _world_size(options["nproc_per_node"])
    if not words or words[0].startswith("-"):
        raise UserError(f"`{program()} estimate` needs a recipe first: {USAGE}")
    recipe, (config, overrides) = words[0], config_and_overrides(words[1:], "estimate")
    module = recipe_modules.load(recipe_modules.recipe_path(recipe))
    _, schema = recipe_modules.main_and_schema(module)
    cfg = build_config(registry.find_config(config), overrides, schema)
    check = getattr(module, "check", None)
    if callable(check):
        check(cfg)  # what `tune validate` and `tune run` refuse before loading, refused here alike
    from tunelib.training.estimate import estimate_config

    result, method = estimate_config(cfg, world_size=world_size, recipe=getattr(module, "RECIPE", None))
    plan = result.plan
    checkpointing = f"every {plan.checkpoint_every} layer(s)" if plan.checkpoint_every else "off"
    print(f"{recipe} ({method}) on {world_size} device(s): batch_size={plan.batch_size} x {plan.seq_len} tokens, "
          f"gradient_accumulation_steps={plan.accumulation}, activation checkpointing {checkpointing}")
    print("Peak memory per device:")
    print("\n".join(result.lines()))
    return 0


def _world_size(given: list[str]) -> int:
    text = given[-1] if given else os.environ.get("WORLD_SIZE", "1")
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"--nproc_per_node={text}; give a whole number of processes, 1 or more")
    return int(text)
