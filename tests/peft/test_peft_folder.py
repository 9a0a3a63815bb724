"""PEFT adapter folders: ours load in PEFT, PEFT's load in ours, with the same logits."""

from __future__ import annotations

import json

import peft
import pytest
import torch
from safetensors import safe_open

from tunelib.errors import CheckpointError
from tunelib.peft import LoraSpec, adapter_config, add_adapters, apply_peft, load_peft_adapter, save_peft_adapter

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

ALL_ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]

OURS = {
    "lora": {"lora_attn_modules": ["q_proj", "v_proj"]},
    "dora": {"lora_attn_modules": ALL_ATTENTION, "use_dora": True, "lora_rank": 4},
    "rslora": {"lora_attn_modules": ["k_proj", "o_proj"], "use_rslora": True, "lora_alpha": 6.0},
    "mlp_output_embeddings": {"lora_attn_modules": ["q_proj"], "apply_lora_to_mlp": True,
                              "apply_lora_to_output": True, "apply_lora_to_embeddings": True},
}


@pytest.mark.parametrize("case", list(OURS))
def test_our_folder_loads_in_peft_with_our_logits(tiny, tokens, tmp_path, case):
    model = apply_peft(tiny.llama(), **OURS[case])
    tiny.randomize(model)
    save_peft_adapter(model, tmp_path, base_model_name_or_path="org/tiny-llama")
    loaded = peft.PeftModel.from_pretrained(tiny.llama(), tmp_path).eval()
    torch.testing.assert_close(loaded(tokens).logits, model(tokens).logits, rtol=1e-5, atol=1e-5)


def test_saved_files_follow_the_peft_format(tiny, tmp_path):
    model = apply_peft(tiny.llama(), lora_attn_modules=["q_proj", "v_proj"], apply_lora_to_mlp=True,
                       lora_rank=4, lora_alpha=8, lora_dropout=0.05)
    save_peft_adapter(model, tmp_path, base_model_name_or_path="meta-llama/Llama-3.1-8B")
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config == {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "meta-llama/Llama-3.1-8B",
        "r": 4, "lora_alpha": 8, "lora_dropout": 0.05,
        "target_modules": ["down_proj", "gate_proj", "q_proj", "up_proj", "v_proj"],
        "bias": "none", "fan_in_fan_out": False, "modules_to_save": None, "init_lora_weights": True,
        "inference_mode": True,
    }
    with safe_open(tmp_path / "adapter_model.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}
        keys = set(f.keys())
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight" in keys
    assert len(keys) == 2 * 2 * 5  # 2 layers × 5 modules × (A, B); no base weight


def test_dora_and_rslora_flags_are_written_only_when_true(tiny):
    dora = adapter_config(apply_peft(tiny.llama(), lora_attn_modules=["q_proj"], use_dora=True, use_rslora=True))
    assert dora["use_dora"] is True and dora["use_rslora"] is True


def test_a_subset_of_same_named_modules_and_mixed_ranks_round_trip_through_peft(tiny, tokens, tmp_path):
    model = tiny.llama()
    add_adapters(model, {"model.layers.1.self_attn.q_proj": LoraSpec(8, 16.0),
                         "model.layers.0.self_attn.q_proj": LoraSpec(4, 16.0),
                         "model.layers.0.mlp.up_proj": LoraSpec(8, 4.0)})
    tiny.randomize(model)
    config = adapter_config(model)
    assert config["target_modules"] == ["model.layers.0.mlp.up_proj", "model.layers.0.self_attn.q_proj",
                                        "model.layers.1.self_attn.q_proj"]
    assert config["r"] == 8 and config["rank_pattern"] == {"model.layers.0.self_attn.q_proj": 4}
    assert config["alpha_pattern"] == {"model.layers.0.mlp.up_proj": 4}
    save_peft_adapter(model, tmp_path)
    loaded = peft.PeftModel.from_pretrained(tiny.llama(), tmp_path).eval()
    torch.testing.assert_close(loaded(tokens).logits, model(tokens).logits, rtol=1e-5, atol=1e-5)
    ours = load_peft_adapter(tiny.llama(), tmp_path)
    torch.testing.assert_close(ours(tokens).logits, model(tokens).logits, rtol=0, atol=0)


PEFT_CONFIGS = {
    "lora": {"target_modules": ["q_proj", "v_proj"], "r": 4, "lora_alpha": 16},
    "dora_rslora": {"target_modules": ["q_proj", "k_proj", "down_proj"], "use_dora": True, "use_rslora": True},
    "regex_and_patterns": {"target_modules": r".*\.(q_proj|up_proj)", "r": 4, "lora_alpha": 8,
                           "rank_pattern": {"up_proj": 2}, "alpha_pattern": {"model.layers.1.self_attn.q_proj": 3}},
    "layers_to_transform": {"target_modules": ["v_proj", "o_proj"], "layers_to_transform": [1]},
    "embeddings_and_output": {"target_modules": ["embed_tokens", "lm_head", "gate_proj"]},
    "all_linear": {"target_modules": "all-linear", "exclude_modules": ["k_proj"], "r": 2},
}


@pytest.mark.parametrize("case", list(PEFT_CONFIGS))
def test_a_peft_saved_folder_loads_into_our_model_with_peft_logits(tiny, tokens, tmp_path, case):
    torch.manual_seed(3)
    theirs = peft.get_peft_model(tiny.llama(), peft.LoraConfig(task_type="CAUSAL_LM", **PEFT_CONFIGS[case])).eval()
    _randomize_peft(theirs)
    theirs.save_pretrained(tmp_path)
    expected = theirs(tokens).logits
    model = load_peft_adapter(tiny.llama(), tmp_path)
    torch.testing.assert_close(model(tokens).logits, expected, rtol=1e-5, atol=1e-5)
    assert (expected - tiny.llama()(tokens).logits).abs().max() > 1e-2


def test_peft_default_alpha_is_used_when_the_config_leaves_it_out(tiny, tokens, tmp_path):
    model = apply_peft(tiny.llama(), lora_attn_modules=["q_proj"], lora_alpha=8)  # PEFT's default
    tiny.randomize(model)
    save_peft_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    del config["lora_alpha"]
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    loaded = load_peft_adapter(tiny.llama(), tmp_path)
    assert loaded.model.layers[0].self_attn.q_proj.scaling == 1.0
    torch.testing.assert_close(loaded(tokens).logits, model(tokens).logits)


def test_loading_onto_a_model_built_with_the_same_settings_only_sets_weights(tiny, tokens, tmp_path):
    settings = {"lora_attn_modules": ["q_proj", "v_proj"], "use_dora": True}
    model = apply_peft(tiny.llama(), **settings)
    tiny.randomize(model)
    save_peft_adapter(model, tmp_path)
    resumed = load_peft_adapter(apply_peft(tiny.llama(), **settings), tmp_path)
    torch.testing.assert_close(resumed(tokens).logits, model(tokens).logits, rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="already has an adapter .rank 4"):
        load_peft_adapter(apply_peft(tiny.llama(), lora_rank=4, **settings), tmp_path)


def test_unsupported_adapter_types_are_refused_in_one_line(tiny, tmp_path):
    ia3 = peft.get_peft_model(tiny.llama(), peft.IA3Config(task_type="CAUSAL_LM", target_modules=["k_proj"],
                                                           feedforward_modules=[]))
    ia3.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"peft_type 'IA3' is not supported; tunelib loads LoRA and DoRA") as e:
        load_peft_adapter(tiny.llama(), tmp_path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("change, message", [
    ({"fan_in_fan_out": True}, "fan_in_fan_out=True is not supported"),
    ({"bias": "all"}, "bias='all' is not supported"),
    ({"target_modules": ["qkv_proj"]}, r"target_modules \['qkv_proj'\] match no module"),
])
def test_unusable_configs_are_refused(tiny, tmp_path, change, message):
    model = apply_peft(tiny.llama(), lora_attn_modules=["q_proj"])
    save_peft_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(CheckpointError, match=message):
        load_peft_adapter(tiny.llama(), tmp_path)


def test_an_adapter_for_another_shape_names_key_and_shapes(tiny, tmp_path):
    model = apply_peft(tiny.llama(), lora_attn_modules=["q_proj"], lora_rank=4)
    save_peft_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, "r": 8}))
    shapes = r"q_proj.lora_A.weight has shape \(4, 64\) but the model's .* is \(8, 64\)"
    with pytest.raises(CheckpointError, match=shapes):
        load_peft_adapter(tiny.llama(), tmp_path)


def _randomize_peft(model) -> None:
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                values = torch.randn(p.shape, generator=gen) * 0.1
                p.copy_(values.abs() + 1 if "magnitude" in name else values)
