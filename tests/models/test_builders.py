"""Named builders, from_hf_config, and how they meet configs and checkpoints."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from pathlib import Path

import pytest
from support.models import FAMILIES

import tunelib.models as models
from tunelib.config.checks import check_component
from tunelib.errors import CheckpointError
from tunelib.families import families
from tunelib.models import AdapterOptions, builders, from_hf_config, hf_formats
from tunelib.models.registry import family_modules, format_for
from tunelib.peft import apply_peft, lora_modules

DOCS = Path(__file__).parents[2] / "docs" / "models.md"

# Parameter counts the model cards / safetensors metadata publish (tied weights counted once).
PUBLISHED = {
    "llama2_7b": 6_738_415_616,
    "llama3_1_8b": 8_030_261_248,
    "llama3_2_1b": 1_235_814_400,
    "mistral_7b_v0_1": 7_241_732_096,
    "qwen2_5_7b": 7_615_616_512,
    "gemma_7b": 8_537_680_896,
    "gemma2_9b": 9_241_705_984,
    "gemma3_1b": 999_885_952,  # google/gemma-3-1b-it's safetensors total
    "phi3_mini": 3_821_079_552,
    "phi4_14b": 14_659_507_200,
}


@pytest.mark.parametrize("name", PUBLISHED)
def test_named_sizes_have_the_published_parameter_counts(name):
    model = builders()[name]()  # on meta: free
    assert all(p.is_meta for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[name]


def test_every_builder_takes_checkpoint_dir_and_exactly_the_adapter_keywords():
    options = [(f.name, f.default) for f in dataclasses.fields(AdapterOptions)]
    for name, builder in {**builders(), "from_hf_config": from_hf_config}.items():
        params = list(inspect.signature(builder).parameters.values())
        assert params[0].name == "checkpoint_dir", name
        assert [(p.name, p.default) for p in params[1:]] == options, name
    assert inspect.signature(from_hf_config).parameters["checkpoint_dir"].default is inspect.Parameter.empty


def test_config_checks_accept_adapter_keys_after_a_component_swap():
    # A named builder's config with LoRA keys, its _component_ swapped for from_hf_config.
    node = {"_component_": "tunelib.models.from_hf_config", "lora_attn_modules": ["q_proj", "v_proj"],
            "apply_lora_to_mlp": True, "lora_rank": 8, "lora_alpha": 16, "use_dora": False}
    assert check_component(node, "model", ("checkpoint_dir",)) == []
    problems = check_component({**node, "lora_rnak": 8, "lora_rank": "eight"}, "model", ("checkpoint_dir",))
    assert any("lora_rnak" in p and "lora_rank" in p for p in problems)
    assert any("lora_rank" in p and "expected" in p for p in problems)
    assert check_component({"_component_": "tunelib.models.llama3_1.llama3_1_8b", "lora_rank": 4}, "model",
                           ("checkpoint_dir",)) == []


def test_adapter_keywords_are_recorded_for_apply_peft():
    assert builders()["llama3_2_1b"]().adapter_options is None  # a plain builder call builds the plain model
    model = builders()["llama3_2_1b"](lora_attn_modules=["q_proj"], lora_rank=4)
    assert model.adapter_options == AdapterOptions(lora_attn_modules=["q_proj"], lora_rank=4)
    assert not lora_modules(model)  # the model package adds no adapters itself
    apply_peft(model)
    assert sorted({name.split(".")[-1] for name in lora_modules(model)}) == ["q_proj"]
    assert {m.lora_A.weight.shape[0] for m in lora_modules(model).values()} == {4}
    assert model.adapter_options is None  # applied once
    with pytest.raises(TypeError, match="lora_rnak"):
        builders()["llama3_2_1b"](lora_rnak=4)


def test_from_hf_config_builds_each_family(hf_folder):
    for family in FAMILIES:
        model = from_hf_config(hf_folder(family))
        assert model.config.hidden_size == 64 and all(p.is_meta for p in model.parameters())


def write_config(folder: Path, **fields) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(fields))
    return folder


def test_unsupported_architecture_lists_the_supported_ones(tmp_path):
    folder = write_config(tmp_path, architectures=["FalconForCausalLM"], model_type="falcon", hidden_size=64)
    with pytest.raises(CheckpointError) as info:
        from_hf_config(folder)
    message = str(info.value)
    assert "FalconForCausalLM" in message and str(folder / "config.json") in message
    for architecture in ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "MistralForCausalLM",
                         "GemmaForCausalLM", "Gemma2ForCausalLM", "Phi3ForCausalLM"):
        assert architecture in message


def test_named_builder_refuses_a_folder_of_another_model(hf_folder):
    with pytest.raises(CheckpointError) as info:
        models.llama3_2.llama3_2_1b(hf_folder("llama3_2"))
    message = str(info.value)
    assert "llama3_2_1b" in message and "from_hf_config" in message
    assert "hidden_size 2048 vs 64" in message and "num_hidden_layers 16 vs 2" in message


def test_named_builder_accepts_its_own_model_and_keeps_the_folders_context_length(tmp_path):
    config = models.qwen2_5.SIZES["7b"]
    folder = write_config(tmp_path, **{**format_for(config).write(config), "max_position_embeddings": 131072})
    model = models.qwen2_5.qwen2_5_7b(str(folder))
    assert model.config.max_position_embeddings == 131072
    assert config.differences(model.config) == []


def test_docs_table_lists_exactly_the_builders():
    rows = [line.split("|") for line in DOCS.read_text().splitlines() if line.startswith("| ")]
    documented = {name for row in rows for name in re.findall(r"`(\w+)`", row[2])}  # the Builders column
    assert documented == set(builders()) | {"from_hf_config"}


def test_each_architecture_is_owned_by_one_module():
    owners = [m.HF_FORMAT.architecture for m in family_modules() if hasattr(m, "HF_FORMAT")]
    assert len(owners) == len(set(owners))  # the registry would keep only one of two
    # and every format serves a family that names it (Llama 2 and 3.x share LlamaForCausalLM's)
    assert set(hf_formats()) == {family.architecture for family in families().values()}
