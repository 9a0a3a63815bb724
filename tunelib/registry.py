"""Recipes and configs as found on disk: what `tune ls`, `tune cp` and `tune run` look up.

Nothing is kept by hand. Each file in `recipes/` is a recipe; at its top it declares, as
plain literals read here without importing the file,

    NAMES = ("lora_finetune_single_device", "lora_finetune_distributed")
    CONFIGS = ("*_lora", "*_qlora", "*_dora")

Each `recipes/configs/<family>/<name>.yaml` is a config named `<family>/<name>`; it belongs to
every recipe with a matching pattern. torchtune's `<name>_single_device` config names
resolve to `<name>` when no file has the longer name.

A shipped name torchtune also has carries torchtune's values (scripts/make_configs.py writes
it from torchtune's file); a torchtune name whose recipe or model tunelib lacks is refused in
one line that says so (recipes/data/torchtune_config_names.json lists both).
"""

from __future__ import annotations

import ast
import difflib
import fnmatch
import functools
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from tunelib.errors import ConfigError

TORCHTUNE_SUFFIXES = ("_single_device",)


@dataclass(frozen=True)
class Recipe:
    """One name a recipe file answers to, and where the file is."""

    name: str
    path: Path
    patterns: tuple[str, ...]
    distributed: bool


def recipes_dir() -> Path:
    """The folder of the installed recipes (`recipes/` in a checkout, `tunelib/recipes` in a wheel)."""
    spec = importlib.util.find_spec("tunelib.recipes")
    return Path(list(spec.submodule_search_locations)[0])


def all_recipes(root: Path | None = None) -> list[Recipe]:
    """Every recipe name, in file order then declaration order."""
    root = root or recipes_dir()
    out = []
    for path in sorted(root.glob("*.py")):
        if path.name.startswith("_"):
            continue
        decl = _declarations(path)
        names = decl.get("NAMES") or (path.stem,)
        for name in names:
            out.append(Recipe(name, path, tuple(decl.get("CONFIGS", ())), bool(decl.get("DISTRIBUTED", True))))
    return out


def _declarations(path: Path) -> dict:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in ("NAMES", "CONFIGS", "DISTRIBUTED"):
                value = ast.literal_eval(node.value)
                found[name] = tuple(value) if isinstance(value, (list, tuple)) else value
    return found


def all_configs(root: Path | None = None) -> dict[str, Path]:
    """Every shipped config by name (`llama3_1/8B_lora`), sorted."""
    folder = (root or recipes_dir()) / "configs"
    found = {}
    for path in folder.rglob("*.yaml"):
        found[path.relative_to(folder).with_suffix("").as_posix()] = path
    return dict(sorted(found.items()))


def configs_of(recipe: Recipe, root: Path | None = None) -> list[str]:
    """The config names a recipe runs."""
    recipes = all_recipes(root)
    return [name for name in all_configs(root) if recipe in _runners(name, recipes)]


def recipes_of(config_name: str, root: Path | None = None) -> list[Recipe]:
    """The recipes that run a shipped config (empty for a user's own file)."""
    return _runners(config_name, all_recipes(root))


def _runners(config_name: str, recipes: list[Recipe]) -> list[Recipe]:
    # The most specific pattern wins: `*_qat_lora` is QAT LoRA's, though `*_lora` matches it too.
    scores = [_specificity(config_name, r.patterns) for r in recipes]
    best = max(scores, default=0)
    return [r for r, score in zip(recipes, scores) if score and score == best]


def _specificity(config_name: str, patterns: tuple[str, ...]) -> int:
    """How much of `config_name` the best matching pattern spells out (0: none matches)."""
    return max((len(p.replace("*", "")) + 1 for p in patterns if fnmatch.fnmatchcase(config_name, p)), default=0)


def find_recipe(name: str, root: Path | None = None) -> Recipe:
    """The recipe called `name`.

    Raises:
        ConfigError: no such recipe (with the closest names).
    """
    recipes = all_recipes(root)
    for recipe in recipes:
        if recipe.name == name:
            return recipe
    missing = not_yet(name, root)
    if missing:
        raise ConfigError(missing)
    raise ConfigError(f"unknown recipe '{name}'{_close(name, [r.name for r in recipes])}; `tune ls` lists them")


def find_config(name: str, root: Path | None = None) -> Path:
    """The YAML file a config name or path points to.

    A path to an existing file wins; then a shipped name; then the same name without a
    torchtune suffix such as `_single_device`.

    Raises:
        ConfigError: neither a file nor a known name (with the closest names).
    """
    path = Path(os.path.expanduser(name))
    if path.is_file():
        return path
    configs = all_configs(root)
    stem = name[:-5] if name.endswith(".yaml") else name
    if stem in configs:
        return configs[stem]
    for suffix in TORCHTUNE_SUFFIXES:
        if stem.endswith(suffix) and stem[: -len(suffix)] in configs:
            return configs[stem[: -len(suffix)]]
    if path.suffix in (".yaml", ".yml"):
        raise ConfigError(f"config file not found: {name}")
    missing = not_yet(stem, root)
    if missing:
        raise ConfigError(missing)
    raise ConfigError(f"unknown config '{name}'{_close(name, list(configs))}; `tune ls` lists them, or give a YAML path")


# What a torchtune name needs that tunelib lacks, by the first pattern its name or recipe matches.
_NEEDS = (
    ("*vision*", "Llama 3.2 Vision models"),
    ("llama4/*", "Llama 4 models"),
    ("dev/*", "torchtune's experimental dev/ recipes"),
    ("*dpo*", "DPO training"),
    ("*ppo*", "PPO training"),
    ("qat_*", "quantization-aware training (QAT)"),
    ("knowledge_distillation_*", "knowledge distillation"),
)


def torchtune_names(root: Path | None = None) -> dict:
    """recipes/data/torchtune_config_names.json: `not_yet` (name -> torchtune's recipe), `same_values`."""
    return _read_names((root or recipes_dir()) / "data" / "torchtune_config_names.json")


@functools.lru_cache(maxsize=4)
def _read_names(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {"not_yet": {}, "same_values": {}}


def not_yet(name: str, root: Path | None = None) -> str | None:
    """One line saying why a torchtune config or recipe name does not run in tunelib, or None."""
    lacking = torchtune_names(root)["not_yet"]
    if name in lacking:
        recipe = lacking[name]
        what = next((w for p, w in _NEEDS if fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(recipe, p)),
                    f"torchtune's {recipe} recipe")
        return (f"'{name}' is torchtune's config for its {recipe} recipe, which needs {what}: tunelib does not "
                f"have that yet; `tune ls` lists the configs tunelib runs")
    if name in set(lacking.values()):
        what = next((w for p, w in _NEEDS if fnmatch.fnmatchcase(name, p)), "it")
        return (f"'{name}' is a torchtune recipe; tunelib does not have {what} yet; "
                f"`tune ls` lists the recipes tunelib runs")
    return None


def torchtune_origin(name: str, root: Path | None = None) -> str | None:
    """Where a shipped config's values come from ("torchtune 0.6.1", "torchtune main"); None: tunelib's own."""
    version = torchtune_names(root)["same_values"].get(name)
    return f"torchtune {version}" if version else None


def config_name(path: Path, root: Path | None = None) -> str | None:
    """The shipped name of a config file, or None for a user's own file."""
    for name, shipped in all_configs(root).items():
        if shipped.resolve() == Path(path).resolve():
            return name
    return None


def _close(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=3, cutoff=0.5)
    return f" (did you mean {', '.join(close)}?)" if close else ""
