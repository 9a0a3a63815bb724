"""Loading and saving HF folders: shards, .bin files, dtypes, hooks, and the errors a user sees."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from support.models import load_hf_model
from tunelib.checkpoint import from_pretrained, load_hf_weights, save_hf_folder
from tunelib.errors import CheckpointError
from tunelib.models import from_hf_config


def copy_folder(src, dst):
    shutil.copytree(src, dst)
    return dst


def rewrite_weights(folder, edit):
    """Apply `edit(dict)` to folder/model.safetensors in place."""
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_sharded_save_writes_index_and_loads_back(hf_folder, tmp_path, token_ids):
    source = hf_folder("llama3_1")
    model = from_pretrained(source)
    out = save_hf_folder(model.state_dict(), tmp_path / "out", source_dir=source, max_shard_size=60_000)
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 1 and not (out / "model.safetensors").exists()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    for shard in shards:
        with safe_open(str(shard), "pt") as f:
            assert f.metadata() == {"format": "pt"}
    assert same_weights(from_pretrained(out), model)
    with torch.no_grad():
        torch.testing.assert_close(load_hf_model(out)(token_ids).logits, model(token_ids), atol=1e-5, rtol=0)


def test_config_says_the_dtype_the_files_hold(hf_folder, tmp_path):
    source = hf_folder("gemma")  # written by transformers 5: {"dtype": "float32"}
    model = from_pretrained(source, dtype=torch.bfloat16)
    out = save_hf_folder(model.state_dict(), tmp_path / "out", source_dir=source)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    generated = save_hf_folder(model.state_dict(), tmp_path / "gen", config=model.config)
    assert json.loads((generated / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_pytorch_bin_checkpoint_loads(hf_folder, tmp_path):
    source = hf_folder("qwen2")
    folder = tmp_path / "bin"
    folder.mkdir()
    shutil.copy(source / "config.json", folder)
    torch.save(load_file(source / "model.safetensors"), folder / "pytorch_model.bin")
    assert same_weights(from_pretrained(folder), from_pretrained(source))


def test_save_copies_tokenizer_and_applies_config_updates(hf_folder, tmp_path):
    source = copy_folder(hf_folder("llama3_2"), tmp_path / "src")
    files = {"tokenizer.json": "{}", "tokenizer_config.json": '{"x": 1}', "special_tokens_map.json": "{}",
             "original/tokenizer.model": "sentencepiece bytes", "chat_template.jinja": "{{ messages }}"}
    for name, text in files.items():
        (source / name).parent.mkdir(exist_ok=True)
        (source / name).write_text(text)
    model = from_pretrained(source)
    out = save_hf_folder(model.state_dict(), tmp_path / "out", source_dir=source,
                         config_updates={"use_cache": False})
    for name, text in files.items():
        assert (out / name).read_text() == text
    assert (out / "generation_config.json").read_text() == (source / "generation_config.json").read_text()
    config = json.loads((out / "config.json").read_text())
    assert config["use_cache"] is False and config["hidden_size"] == 64


def test_load_converts_dtype_places_buffers_and_ties(hf_folder):
    model = from_hf_config(hf_folder("llama3_2"))  # tied embeddings
    load_hf_weights(model, hf_folder("llama3_2"), dtype=torch.float16)
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32  # computed, never rounded


def test_transform_sees_every_weight_before_it_is_assigned(hf_folder):
    folder = hf_folder("phi3")  # fused checkpoint tensors: the hook sees our split names
    model = from_hf_config(folder)
    seen = []

    def transform(name, tensor):
        seen.append(name)
        return tensor * 2 if name.endswith("k_proj.weight") else tensor

    load_hf_weights(model, folder, transform=transform)
    reference = from_pretrained(folder)
    assert sorted(seen) == sorted(name for name, _ in reference.named_parameters())
    torch.testing.assert_close(model.model.layers[0].self_attn.k_proj.weight,
                               2 * reference.model.layers[0].self_attn.k_proj.weight)


def test_ignore_missing_leaves_adapter_parameters_alone(hf_folder):
    folder = hf_folder("llama3")
    model = from_hf_config(folder)
    with torch.device("meta"):
        model.model.layers[0].self_attn.q_proj.register_parameter("lora_A", torch.nn.Parameter(torch.empty(4, 64)))
    with pytest.raises(CheckpointError, match=r"lacks weight 'model\.layers\.0\.self_attn\.q_proj\.lora_A' "
                                              r"\(expected shape \(4, 64\)\)"):
        load_hf_weights(model, folder)
    load_hf_weights(model, folder, ignore_missing=lambda name: "lora_" in name)
    assert model.model.layers[0].self_attn.q_proj.lora_A.is_meta
    assert not model.model.layers[0].self_attn.q_proj.weight.is_meta


def one_line_error(folder, builder=from_hf_config) -> str:
    with pytest.raises(CheckpointError) as info:
        load_hf_weights(builder(folder), folder)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_misshaped_weight_names_key_and_both_shapes(hf_folder, tmp_path):
    folder = copy_folder(hf_folder("llama3"), tmp_path / "m")
    key = "model.layers.1.mlp.up_proj.weight"
    rewrite_weights(folder, lambda t: t.update({key: t[key][:80]}))
    message = one_line_error(folder)
    assert key in message and "(80, 64)" in message and "(96, 64)" in message


def test_missing_weight_names_key_and_shape(hf_folder, tmp_path):
    folder = copy_folder(hf_folder("gemma"), tmp_path / "m")
    rewrite_weights(folder, lambda t: t.pop("model.norm.weight"))
    assert "'model.norm.weight' (expected shape (64,))" in one_line_error(folder)


def test_unexpected_weight_names_key_and_shape(hf_folder, tmp_path):
    folder = copy_folder(hf_folder("mistral"), tmp_path / "m")
    rewrite_weights(folder, lambda t: t.update({"model.layers.0.mlp.extra.weight": torch.zeros(3, 5)}))
    message = one_line_error(folder)
    assert "'model.layers.0.mlp.extra.weight' (3, 5)" in message and "does not have" in message


def test_rotary_buffers_and_tied_heads_in_old_checkpoints_are_ignored(hf_folder, tmp_path):
    folder = copy_folder(hf_folder("qwen2"), tmp_path / "m")  # tied
    rewrite_weights(folder, lambda t: t.update({"model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(8),
                                                "lm_head.weight": t["model.embed_tokens.weight"].clone()}))
    assert same_weights(from_pretrained(folder), from_pretrained(hf_folder("qwen2")))


def test_folder_without_weights_or_with_missing_shard(hf_folder, tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    shutil.copy(hf_folder("llama3") / "config.json", folder)
    assert "holds no weights" in one_line_error(folder)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}}))
    assert "model-00001-of-00002.safetensors" in one_line_error(folder)


def test_save_without_source_or_config_is_refused(tmp_path):
    with pytest.raises(ValueError, match="source_dir or config"):
        save_hf_folder({}, tmp_path)
