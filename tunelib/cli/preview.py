"""`tune preview CONFIG [OVERRIDES] [--num-samples N]`: see what the model will learn.

Builds the config's tokenizer and training data exactly as `tune run` would (same checks,
same overrides), then prints the first samples decoded, with the trained tokens between « and »
(in colour on a terminal). No model is built and no weight is loaded.
"""

from __future__ import annotations

import sys

from tunelib import registry
from tunelib.cli import recipe_modules
from tunelib.cli.words import config_and_overrides, take_options
from tunelib.config import allow_module, build_config, instantiate
from tunelib.errors import UserError, program

USAGE = "preview CONFIG [OVERRIDES...] [--num-samples N] [--recipe RECIPE] [--allow-module MODULE]"


def add_parser(sub) -> None:
    # Shown by `tune --help`; main() hands the words to run_words, since overrides look like options.
    sub.add_parser("preview", help="print the first training samples with trained tokens marked", add_help=False)


def run_words(words: list[str]) -> int:
    """Run `tune preview` with the words after `preview`; return the exit code."""
    if not words or words[0] in ("-h", "--help"):
        print(f"usage: {program()} {USAGE}\n\n{__doc__.strip()}")
        return 0
    options, words = take_options(words, ("num-samples", "recipe", "allow-module"))
    for module in options["allow-module"]:
        allow_module(module)
    config, overrides = config_and_overrides(words, "preview")
    count = _count(options["num-samples"])
    candidates = recipe_modules.schemas_for(config, options["recipe"][-1] if options["recipe"] else None)
    schema = candidates[0][1] if candidates else None
    cfg = build_config(registry.find_config(config), overrides, schema)
    tokenizer = instantiate(cfg.tokenizer)
    nodes = list(cfg.dataset) if _is_list(cfg.dataset) else [cfg.dataset]
    from tunelib.data import combine, preview

    dataset = combine([instantiate(node, tokenizer) for node in nodes], seed=cfg.get("seed") or 0)
    print(preview(dataset, tokenizer, count, color=sys.stdout.isatty()))
    return 0


def _count(values: list[str]) -> int:
    if not values:
        return 3
    try:
        count = int(values[-1])
    except ValueError:
        count = 0
    if count < 1:
        raise UserError(f"--num-samples {values[-1]!r}: give a positive number")
    return count


def _is_list(node) -> bool:
    from omegaconf import ListConfig

    return isinstance(node, ListConfig)
