"""`tune validate CONFIG [OVERRIDES]`: run the checks `tune run` makes, and nothing else.

Unknown keys, wrong types, refused or missing `_component_`s and keyword arguments a
component does not take are reported with "did you mean". No model is built and no weight
is loaded.
"""

from __future__ import annotations

from tunelib import registry
from tunelib.cli import recipe_modules
from tunelib.cli.words import config_and_overrides, take_options
from tunelib.config import allow_module, build_config
from tunelib.errors import ConfigError

USAGE = "tune validate CONFIG [OVERRIDES...] [--recipe RECIPE] [--allow-module MODULE]"


def add_parser(sub) -> None:
    # Shown by `tune --help`; main() hands the words to run_words, since overrides look like options.
    sub.add_parser("validate", help="check a config as `tune run` would", add_help=False)


def run_words(words: list[str]) -> int:
    """Run `tune validate` with the words after `validate`; return the exit code."""
    if not words or words[0] in ("-h", "--help"):
        print(f"usage: {USAGE}\n\n{__doc__.strip()}")
        return 0
    options, words = take_options(words, ("recipe", "allow-module"))
    for module in options["allow-module"]:
        allow_module(module)
    config, overrides = config_and_overrides(words, "validate")
    recipe = options["recipe"][-1] if options["recipe"] else None
    path = registry.find_config(config)
    candidates = recipe_modules.schemas_for(config, recipe)
    if not candidates:
        build_config(path, overrides, None)
        print(f"Config is well-formed (no recipe runs {config}; only its components were checked).")
        return 0
    failures = []
    for name, schema in candidates:
        try:
            build_config(path, overrides, schema)
        except ConfigError as e:
            failures.append((name, e))
            continue
        print(f"Config is well-formed for recipe {name}.")
        return 0
    if len(failures) == 1:
        raise failures[0][1]
    name, error = min(failures, key=lambda f: str(f[1]).count(";"))
    raise ConfigError(f"checked as a config for {name} (give --recipe to choose another): {error}")
