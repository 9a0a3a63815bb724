"""The strict checks `tune run` and `tune validate` share, on configs written for these tests."""

from __future__ import annotations

import dataclasses

import pytest

from tunelib.config import Component, build_config, component, setting
from tunelib.errors import ConfigError


@dataclasses.dataclass
class Schema:
    output_dir: str = setting(doc="Where results go.")
    model: Component = component("The model.", provided=("checkpoint_dir",))
    dataset: Component | list[Component] = component("The data.", provided=("*1",))
    optimizer: Component | None = component("The optimizer.", default=None, provided=("*1",))
    batch_size: int = setting(2, "batch")
    dtype: str = setting("fp32", "precision")


MODEL = "model:\n  _component_: support.components.build_model\n"
DATA = "dataset:\n  _component_: support.components.build_dataset\n  source: json\n"


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def check(tmp_path, text, *words):
    return build_config(write(tmp_path, text), list(words), Schema)


def test_a_good_config_passes(tmp_path, allow_support):
    cfg = check(tmp_path, "output_dir: /o\n" + MODEL + DATA)
    assert cfg.dataset.source == "json" and cfg.batch_size == 2


def test_unknown_yaml_key_gets_did_you_mean(tmp_path, allow_support):
    with pytest.raises(ConfigError, match=r"unknown key 'batchsize' \(did you mean 'batch_size'\?\)"):
        check(tmp_path, "output_dir: /o\nbatchsize: 4\n" + MODEL + DATA)


def test_missing_required_key_names_it_and_its_doc(tmp_path, allow_support):
    with pytest.raises(ConfigError, match=r"missing required key 'output_dir' \(Where results go.\)"):
        check(tmp_path, MODEL + DATA)


def test_all_problems_are_reported_in_one_line(tmp_path, allow_support):
    text = "output_dir: /o\nbatchsize: 4\ndtype: 3\n" + MODEL + "  lora_rnak: 4\n" + DATA
    with pytest.raises(ConfigError) as info:
        check(tmp_path, text)
    message = str(info.value)
    assert "\n" not in message and message.startswith("config has 3 problems")
    assert "batchsize" in message and "dtype: expected str, got 3" in message and "model.lora_rnak" in message


def test_nested_component_keywords_are_checked(tmp_path, allow_support):
    text = ("output_dir: /o\n" + MODEL + "dataset:\n  _component_: support.components.build_loader\n"
            "  transform: {_component_: support.components.build_transform, scael: 2.0}\n")
    with pytest.raises(ConfigError, match=r"unknown key 'dataset.transform.scael'.*did you mean 'dataset.transform.scale'"):
        check(tmp_path, text)


def test_list_of_components_is_checked_item_by_item(tmp_path, allow_support):
    text = "output_dir: /o\n" + MODEL + "dataset:\n  - {_component_: support.components.build_dataset, source: a}\n" \
           "  - {_component_: support.components.build_transform, scael: 2}\n"
    with pytest.raises(ConfigError, match=r"unknown key 'dataset.1.scael'"):
        check(tmp_path, text)


def test_a_key_the_recipe_passes_may_not_be_set(tmp_path, allow_support):
    with pytest.raises(ConfigError, match=r"model.checkpoint_dir is passed by the recipe"):
        check(tmp_path, "output_dir: /o\n" + MODEL + "  checkpoint_dir: /x\n" + DATA)
    text = "output_dir: /o\n" + MODEL + DATA + "optimizer:\n  _component_: support.components.Optimizer\n  params: 1\n"
    with pytest.raises(ConfigError, match=r"optimizer.params is passed by the recipe"):
        check(tmp_path, text)


def test_missing_required_component_argument(tmp_path, allow_support):
    with pytest.raises(ConfigError, match=r"missing required key 'dataset.source'"):
        check(tmp_path, "output_dir: /o\n" + MODEL + "dataset:\n  _component_: support.components.build_dataset\n")


def test_component_node_without_component_key(tmp_path, allow_support):
    with pytest.raises(ConfigError, match=r"model: expected a node with a _component_"):
        check(tmp_path, "output_dir: /o\nmodel: {lora_rank: 4}\n" + DATA)


def test_os_system_is_refused_with_the_way_to_allow_a_module(tmp_path, allow_support):
    text = "output_dir: /o\nmodel:\n  _component_: os.system\n  command: echo pwned\n" + DATA
    with pytest.raises(ConfigError, match=r"'os.system' is not in an allowed module.*--allow-module os"):
        check(tmp_path, text)


@pytest.mark.parametrize("target", ["torch.hub.load", "torch.load", "torch.jit.load"])
def test_code_loading_parts_of_torch_are_refused(tmp_path, allow_support, target):
    with pytest.raises(ConfigError, match="refused"):
        check(tmp_path, f"output_dir: /o\nmodel:\n  _component_: {target}\n" + DATA)


def test_private_names_are_refused(tmp_path, allow_support):
    with pytest.raises(ConfigError, match="private"):
        check(tmp_path, "output_dir: /o\nmodel:\n  _component_: tunelib.config.components._import\n" + DATA)


def test_user_module_needs_the_opt_in(tmp_path, monkeypatch):
    monkeypatch.delenv("TUNELIB_ALLOW_MODULES", raising=False)
    with pytest.raises(ConfigError, match=r"'support.components.build_model' is not in an allowed module"):
        check(tmp_path, "output_dir: /o\n" + MODEL + DATA)


def test_misspelled_component_suggests_the_real_one(tmp_path, allow_support):
    text = "output_dir: /o\nmodel:\n  _component_: support.components.build_modle\n" + DATA
    with pytest.raises(ConfigError, match=r"has no 'build_modle' \(did you mean support.components.build_model\?\)"):
        check(tmp_path, text)


def test_module_in_working_directory_is_not_imported_silently(tmp_path, monkeypatch):
    (tmp_path / "mydata.py").write_text("def build(tokenizer):\n    return 1\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TUNELIB_ALLOW_MODULES", "support,mydata")
    text = "output_dir: /o\n" + MODEL + "dataset:\n  _component_: mydata.build\n"
    with pytest.raises(ConfigError, match=r"no module named 'mydata'; ./mydata.py exists.*PYTHONPATH=\."):
        check(tmp_path, text)


def test_malformed_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "output_dir: /o\nmodel:\n  _component_: x\n  bad: [1, 2\nbatch_size: 3\n")
    with pytest.raises(ConfigError, match=r"c.yaml: line \d+, column \d+: malformed YAML"):
        build_config(path, [], Schema)


def test_missing_file_and_bad_interpolation(tmp_path, allow_support):
    with pytest.raises(ConfigError, match="config file not found"):
        build_config(tmp_path / "nope.yaml", [], Schema)
    with pytest.raises(ConfigError, match=r"cannot resolve an interpolation in 'output_dir'"):
        check(tmp_path, "output_dir: ${outptu}/x\n" + MODEL + DATA)
