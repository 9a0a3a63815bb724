"""Configs: YAML files with `_component_` nodes, strict overrides and checks.

Nothing here imports torch; a `_component_` target is imported only when it is checked or
built.
"""

from tunelib.config.components import allow_module, instantiate, set_recipe_namespace
from tunelib.config.parse import build_config, run_script, split_config_arg
from tunelib.config.schema import REQUIRED, Component, component, setting

__all__ = [
    "REQUIRED",
    "Component",
    "allow_module",
    "build_config",
    "component",
    "instantiate",
    "run_script",
    "set_recipe_namespace",
    "setting",
    "split_config_arg",
]
