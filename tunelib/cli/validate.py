"""`tune validate CONFIG [OVERRIDES]`: run the checks `tune run` makes, and nothing else.

Unknown keys, wrong types, refused or missing `_component_`s and keyword arguments a
component does not take are reported with "did you mean". Then what the recipe would refuse
before its first step is checked too: the model is built on the meta device (adapter module
names, LoRA settings in a full fine-tuning recipe), and the optimizer, schedule and loss on a
stand-in parameter. No weight and no data is loaded, and nothing is written.

The recipe is the one `tune run` would be given: `--recipe NAME`; else, for a shipped config,
the recipe that runs it; else the recipe a `tune run NAME` line in the file's comments names
(as torchtune's files have); else the one recipe whose settings the file fits. When several
fit, it asks for `--recipe`.
"""

from __future__ import annotations

import re
from pathlib import Path

from tunelib import registry
from tunelib.cli import recipe_modules
from tunelib.cli.words import config_and_overrides, take_options
from tunelib.config import allow_module, build_config
from tunelib.errors import ConfigError, program

USAGE = "validate CONFIG [OVERRIDES...] [--recipe RECIPE] [--allow-module MODULE]"
_NAMED_IN_COMMENT = re.compile(r"^\s*#.*\btune run (?:--\S+ \S+ )*([a-z0-9_]+)\b", re.MULTILINE)


def add_parser(sub) -> None:
    # Shown by `tune --help`; main() hands the words to run_words, since overrides look like options.
    sub.add_parser("validate", help="check a config as `tune run` would", add_help=False)


def run_words(words: list[str]) -> int:
    """Run `tune validate` with the words after `validate`; return the exit code."""
    if not words or words[0] in ("-h", "--help"):
        print(f"usage: {program()} {USAGE}\n\n{__doc__.strip()}")
        return 0
    options, words = take_options(words, ("recipe", "allow-module"))
    for module in options["allow-module"]:
        allow_module(module)
    config, overrides = config_and_overrides(words, "validate")
    path = registry.find_config(config)
    recipe, why = _chosen_recipe(config, path, options["recipe"][-1] if options["recipe"] else None)
    if recipe is not None:
        notes = _check(path, overrides, recipe)
        _report(f"Config is well-formed for recipe {recipe}{why}.", notes)
        return 0
    return _fit_any_recipe(config, path, overrides)


def _chosen_recipe(config: str, path: Path, given: str | None) -> tuple[str | None, str]:
    """The recipe `tune run` would be given, and how it was chosen (None: try them all)."""
    if given:
        return given, ""
    name = registry.config_name(path)
    if name is not None:
        recipes = registry.recipes_of(name)
        return (recipes[0].name, "") if recipes else (None, "")
    match = _NAMED_IN_COMMENT.search(path.read_text(errors="replace"))
    if match and match.group(1) in {r.name for r in registry.all_recipes()}:
        return match.group(1), f" (named in {path.name}'s comments; --recipe checks another)"
    return None, ""


def _check(path: Path, overrides: list[str], recipe: str) -> list[str]:
    """Every check `tune run RECIPE` makes before loading weights; returns notes for the user."""
    module = recipe_modules.load(recipe_modules.recipe_path(recipe))
    _, schema = recipe_modules.main_and_schema(module)
    cfg = build_config(path, overrides, schema)
    check = getattr(module, "check", None)
    return list(check(cfg) or []) if callable(check) else []


def _fit_any_recipe(config: str, path: Path, overrides: list[str]) -> int:
    if not registry.all_recipes():
        build_config(path, overrides, None)
        print("Config is well-formed (no recipe is installed; only its components were checked).")
        return 0
    fits, failures, seen = [], [], set()
    for recipe in registry.all_recipes():
        if recipe.path in seen:
            continue
        seen.add(recipe.path)
        try:
            fits.append((recipe.name, _check(path, overrides, recipe.name)))
        except ConfigError as e:
            failures.append((recipe.name, e))
    if len(fits) == 1:
        name, notes = fits[0]
        _report(f"Config is well-formed for recipe {name} (the only recipe it fits; --recipe checks another).", notes)
        return 0
    if fits:
        names = ", ".join(name for name, _ in fits)
        raise ConfigError(f"{config} fits more than one recipe ({names}); give the one you will run: "
                          f"tune validate {config} --recipe NAME")
    name, error = min(failures, key=lambda f: str(f[1]).count(";"))
    raise ConfigError(f"checked as a config for {name}, the recipe it comes closest to (give --recipe to choose "
                      f"another): {error}")


def _report(line: str, notes: list[str]) -> None:
    print(line)
    for note in notes:
        print(f"Note: {note}")
