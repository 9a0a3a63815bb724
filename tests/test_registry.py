"""The registry is derived from files; every shipped config belongs to a recipe and validates."""

from __future__ import annotations

import pytest

from tunelib import registry
from tunelib.errors import ConfigError

SHIPPED = list(registry.all_configs())


def test_registry_comes_from_the_files(fake_recipes):
    names = [r.name for r in registry.all_recipes()]
    assert names == ["train_single_device", "train_distributed"]
    assert registry.configs_of(registry.find_recipe("train_distributed")) == ["tiny/1B_full", "tiny/1B_lora"]
    (fake_recipes / "configs/tiny/7B_lora.yaml").write_text("x: 1\n")  # a new file shows up at once
    assert "tiny/7B_lora" in registry.configs_of(registry.find_recipe("train_single_device"))


def test_torchtune_single_device_names_resolve(fake_recipes):
    assert registry.find_config("tiny/1B_lora_single_device") == fake_recipes / "configs/tiny/1B_lora.yaml"
    with pytest.raises(ConfigError, match="did you mean tiny/1B_lora"):
        registry.find_config("tiny/1B_lora_single_devise")


def test_config_of_no_recipe_is_found_but_runs_nowhere(fake_recipes):
    assert registry.recipes_of("orphan") == []


def test_every_shipped_config_is_run_by_a_recipe():
    orphans = [name for name in SHIPPED if not registry.recipes_of(name)]
    assert orphans == []


def test_every_recipe_pattern_matches_a_config():
    for recipe in registry.all_recipes():
        if recipe.patterns:
            assert registry.configs_of(recipe), f"{recipe.name} declares {recipe.patterns} but no config matches"


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_validates(name, tune):
    code, out, err = tune("validate", name)
    assert code == 0, err


def test_shipped_configs_match_their_generator():
    """recipes/configs/*/*_{full,lora,dora,qlora}.yaml are written by scripts/make_configs.py."""
    import importlib.util
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts/make_configs.py"
    spec = importlib.util.spec_from_file_location("make_configs", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_configs"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    assert module.main(["--check"]) == 0, "run: python scripts/make_configs.py"
