"""`tune cat CONFIG [OVERRIDES]`: print a config as YAML, with overrides applied and interpolations resolved."""

from __future__ import annotations

from tunelib import registry
from tunelib.cli import recipe_modules
from tunelib.cli.words import config_and_overrides, take_options
from tunelib.config import allow_module
from tunelib.config.loading import load_yaml
from tunelib.config.overrides import apply_overrides, parse_overrides
from tunelib.config.parse import resolve
from tunelib.errors import program

USAGE = "cat CONFIG [OVERRIDES...] [--recipe RECIPE] [--allow-module MODULE]"


def add_parser(sub) -> None:
    # Shown by `tune --help`; main() hands the words to run_words, since overrides look like options.
    sub.add_parser("cat", help="print a config with overrides applied", add_help=False)


def run_words(words: list[str]) -> int:
    """Run `tune cat` with the words after `cat`; return the exit code."""
    from omegaconf import OmegaConf

    if not words or words[0] in ("-h", "--help"):
        print(f"usage: {program()} {USAGE}\n\n{__doc__.strip()}")
        return 0
    options, words = take_options(words, ("recipe", "allow-module"))
    for module in options["allow-module"]:
        allow_module(module)
    config, overrides = config_and_overrides(words, "cat")
    cfg = load_yaml(registry.find_config(config))
    if overrides:
        candidates = recipe_modules.schemas_for(config, options["recipe"][-1] if options["recipe"] else None)
        # With several candidate recipes (a user's own file) only the YAML's own keys are known.
        schema = candidates[0][1] if len(candidates) == 1 else None
        apply_overrides(cfg, parse_overrides(overrides), schema)
    print(OmegaConf.to_yaml(OmegaConf.create(resolve(cfg)), sort_keys=False), end="")
    return 0
