"""Command-line overrides as torchtune users type them, applied strictly."""

from __future__ import annotations

import dataclasses

import pytest
from omegaconf import OmegaConf

from tunelib.config import Component, build_config, component, setting
from tunelib.config.overrides import parse_overrides
from tunelib.errors import ConfigError

YAML = """
output_dir: /tmp/out
model:
  _component_: support.components.build_model
  lora_attn_modules: [q_proj, v_proj]
  lora_rank: 8
dataset:
  _component_: support.components.build_dataset
  source: tatsu-lab/alpaca
batch_size: 2
"""


@dataclasses.dataclass
class Schema:
    output_dir: str = setting(doc="out")
    model: Component = component("model", provided=("checkpoint_dir",))
    dataset: Component = component("data", provided=("*1",))
    batch_size: int = setting(2, "batch")
    seed: int | None = setting(None, "seed")
    prompt: str = setting("hi", "a string setting")
    clip_grad_norm: float | None = setting(None, "clip")


@pytest.fixture
def config_file(tmp_path, allow_support):
    path = tmp_path / "c.yaml"
    path.write_text(YAML)
    return path


def build(path, *words):
    return build_config(path, list(words), Schema)


def test_the_torchtune_docs_line_with_a_shell_split_list(config_file):
    # What bash hands over for: --model.lora_attn_modules=["q_proj", "k_proj", "v_proj"] ...
    words = ["--model.lora_attn_modules=[q_proj,", "k_proj,", "v_proj]", "--model.apply_lora_to_mlp=True",
             "--model.lora_rank=64", "--model.lora_alpha=128"]
    cfg = build(config_file, *words)
    assert list(cfg.model.lora_attn_modules) == ["q_proj", "k_proj", "v_proj"]
    assert cfg.model.apply_lora_to_mlp is True
    assert cfg.model.lora_rank == 64 and cfg.model.lora_alpha == 128


@pytest.mark.parametrize("words", [["batch_size=8"], ["--batch_size=8"], ["--batch_size", "8"]])
def test_three_spellings_of_a_setting(config_file, words):
    assert build(config_file, *words).batch_size == 8


def test_value_containing_equals_and_a_string_that_looks_like_yaml(config_file):
    cfg = build(config_file, "dataset.source=a=b", "prompt=Hello: world")
    assert cfg.dataset.source == "a=b"
    assert cfg.prompt == "Hello: world"


def test_schema_default_can_be_set_without_plus_and_none_means_null(config_file):
    cfg = build(config_file, "seed=7", "clip_grad_norm=None")
    assert cfg.seed == 7 and cfg.clip_grad_norm is None


def test_component_keyword_missing_from_yaml_can_be_set(config_file):
    # dataset.split is a parameter of build_dataset but not in the YAML.
    assert build(config_file, "dataset.split=train[:10%]").dataset.split == "train[:10%]"


def test_typo_gets_did_you_mean(config_file):
    with pytest.raises(ConfigError, match=r"unknown key 'model.lora_rnak'.*did you mean 'model.lora_rank'"):
        build(config_file, "--model.lora_rnak=8")


def test_key_at_the_wrong_level_suggests_the_component(config_file):
    with pytest.raises(ConfigError, match=r"did you mean 'model.lora_rank'"):
        build(config_file, "lora_rank=64")


def test_unknown_top_level_key_suggests_the_schema_field(config_file):
    with pytest.raises(ConfigError, match=r"unknown key 'batch_sise'.*did you mean 'batch_size'"):
        build(config_file, "batch_sise=4")


def test_remove_and_add(config_file):
    cfg = build(config_file, "~model.lora_attn_modules", "+dataset.streaming=true")
    assert "lora_attn_modules" not in cfg.model
    assert cfg.dataset.streaming is True  # build_dataset takes **load_kwargs


def test_removing_a_missing_key_is_an_error(config_file):
    with pytest.raises(ConfigError, match=r"cannot remove 'model.lora_rnk'.*did you mean 'model.lora_rank'"):
        build(config_file, "~model.lora_rnk")


def test_removing_only_the_component_is_refused(config_file):
    with pytest.raises(ConfigError, match="cannot be removed alone"):
        build(config_file, "~model._component_")


def test_component_swap_keeps_the_keywords(config_file):
    cfg = build(config_file, "model=support.components.build_other_model")
    assert cfg.model._component_ == "support.components.build_other_model"
    assert cfg.model.lora_rank == 8


def test_wrong_type_is_reported_with_the_key(config_file):
    with pytest.raises(ConfigError, match=r"model.lora_rank: expected int, got 'abc'"):
        build(config_file, "model.lora_rank=abc")
    with pytest.raises(ConfigError, match=r"batch_size: expected int, got 2.5"):
        build(config_file, "batch_size=2.5")


def test_literal_choices_are_checked(config_file):
    with pytest.raises(ConfigError, match=r"model.norm: expected one of 'rms', 'layer', got 'batch'"):
        build(config_file, "model.norm=batch")


@pytest.mark.parametrize("words, message", [
    (["batch_size"], "is not an override"),
    (["--batch_size"], "has no value"),
    (["model.lora_attn_modules=[q_proj,", "k_proj"], "never close"),
    (["bad..key=1"], "is not a config key"),
])
def test_bad_override_syntax(words, message):
    with pytest.raises(ConfigError, match=message):
        parse_overrides(words)


def test_overrides_apply_before_interpolation(tmp_path, allow_support):
    path = tmp_path / "c.yaml"
    path.write_text(YAML + "log_dir: ${output_dir}/logs\n")

    @dataclasses.dataclass
    class WithLogDir(Schema):
        log_dir: str = setting("", "logs")

    cfg = build_config(path, ["output_dir=/data/run1"], WithLogDir)
    assert cfg.log_dir == "/data/run1/logs"


def test_config_is_read_only_and_strict(config_file):
    cfg = build(config_file)
    with pytest.raises(Exception):
        cfg.batch_size = 3
    with pytest.raises(Exception):
        _ = cfg.batch_sise
    assert OmegaConf.to_container(cfg)["seed"] is None  # schema defaults are filled in
