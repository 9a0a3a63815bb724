"""Building `_component_` nodes."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from tunelib.config import instantiate, set_recipe_namespace
from tunelib.errors import ConfigError


def test_positional_args_keywords_and_nested_components(allow_support):
    node = OmegaConf.create({
        "_component_": "support.components.build_loader",
        "dataset": [1, 2],
        "transform": {"_component_": "support.components.build_transform", "scale": 2.0},
    })
    built = instantiate(node, batch_size=4)
    assert built["batch_size"] == 4
    assert built["dataset"] == [1, 2] and built["transform"] == ("transform", 2.0)
    data = instantiate({"_component_": "support.components.build_dataset", "source": "a"}, "TOK")
    assert data["tokenizer"] == "TOK"


def test_torch_components_build(allow_support):
    import torch

    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = instantiate({"_component_": "torch.optim.SGD", "lr": 0.1}, params)
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["lr"] == 0.1


def test_list_of_nodes_and_none():
    assert instantiate(None) is None
    built = instantiate([{"_component_": "tunelib.errors.UserError"}])
    assert isinstance(built[0], Exception)


def test_bare_name_comes_from_the_running_recipe():
    class Local:
        def __init__(self, x=1):
            self.x = x

    set_recipe_namespace({"__name__": __name__, "Local": Local})
    try:
        assert instantiate({"_component_": "Local", "x": 3}).x == 3
    finally:
        set_recipe_namespace({})
    with pytest.raises(ConfigError, match="running recipe defines no class or function 'Local'"):
        instantiate({"_component_": "Local"})


def test_node_without_component_is_an_error():
    with pytest.raises(ConfigError, match="needs a _component_"):
        instantiate({"x": 1})
