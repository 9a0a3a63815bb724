"""Find and import the recipe a command names: a shipped name or a user's .py file."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

from tunelib import registry
from tunelib.errors import ConfigError


def recipe_path(name_or_path: str) -> Path:
    """The file of a recipe given by name (`tune ls`) or by path to a .py file.

    Raises:
        ConfigError: neither a known name nor an existing .py file.
    """
    path = Path(name_or_path).expanduser()
    if path.suffix == ".py":
        if not path.is_file():
            raise ConfigError(f"recipe file not found: {name_or_path}")
        return path.resolve()
    return registry.find_recipe(name_or_path).path


def load(path: Path) -> ModuleType:
    """Import a recipe file without running its `__main__` block or touching sys.path.

    Raises:
        ConfigError: the file is not valid Python (the message names the line).
    """
    shipped = importlib.util.find_spec(f"tunelib.recipes.{path.stem}")
    if shipped is not None and shipped.origin and Path(shipped.origin).resolve() == path.resolve():
        return importlib.import_module(f"tunelib.recipes.{path.stem}")
    spec = importlib.util.spec_from_file_location(f"tune_recipe_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:  # a user's recipe that does not parse; errors it raises when run stay tracebacks
        where = e.filename or path  # the recipe, or a module of the user's it imports
        raise ConfigError(f"recipe file {where}, line {e.lineno}: {e.msg}; fix the file "
                          f"(python -m py_compile {where} shows the same)") from None
    return module


def main_and_schema(module: ModuleType):
    """A recipe module's `main` and `SCHEMA` (None when it declares none).

    Raises:
        ConfigError: the file has no `main(cfg)` function.
    """
    main = getattr(module, "main", None)
    if not callable(main):
        raise ConfigError(f"{module.__file__} is not a recipe: it has no main(cfg) function")
    return main, getattr(module, "SCHEMA", None)


def schemas_for(config_arg: str, recipe_arg: str | None) -> list[tuple[str, type | None]]:
    """The (recipe name, schema) pairs a config should be checked against.

    `--recipe` wins; a shipped config is checked against the recipes that run it; a user's
    own file against every recipe (the caller keeps the first that fits).
    """
    if recipe_arg:
        return [(recipe_arg, main_and_schema(load(recipe_path(recipe_arg)))[1])]
    path = registry.find_config(config_arg)
    name = registry.config_name(path)
    recipes = registry.recipes_of(name) if name else registry.all_recipes()
    seen, out = set(), []
    for recipe in recipes:
        if recipe.path in seen:
            continue
        seen.add(recipe.path)
        out.append((recipe.name, main_and_schema(load(recipe.path))[1]))
    return out
