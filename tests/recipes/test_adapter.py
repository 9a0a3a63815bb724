"""`tune run adapter_finetune_single_device` with the shipped LLaMA-Adapter configs on tiny models:
losses, step 0 equal to the base model, tunelib's adapter folder, the v2 fold, resume, NF4 base."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from support.models import load_hf_model
from support.recipes import ROWS, data_file, finetune, tiny_model_folder

RECIPE = "adapter_finetune_single_device"
V1, V2 = (RECIPE, "llama3_2/1B_adapter"), (RECIPE, "llama3_2/1B_adapter_v2")
FAST = ("lr_scheduler.num_warmup_steps=0", "optimizer.lr=1e-2")
IDS = torch.randint(0, 700, (2, 12), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    # 3 layers, so that the configs' adapter_start_layer=2 leaves two plain layers and prompts one.
    return tiny_model_folder(tmp_path_factory.mktemp("models"), "llama3_2", num_hidden_layers=3)


def ours(folder, adapter_dir):
    """The base folder plus a saved LLaMA-Adapter, loaded by tunelib."""
    import tunelib.checkpoint
    from tunelib.peft import load_llama_adapter

    return load_llama_adapter(tunelib.checkpoint.from_pretrained(folder, dtype=torch.float32), adapter_dir).eval()


def first_batch_loss(folder, data) -> float:
    """transformers' loss of the base model on the recipe's first batch."""
    from tunelib.data import alpaca_dataset, build_loader
    from tunelib.tokenizers import from_pretrained

    tokenizer = from_pretrained(folder, max_seq_len=256)
    dataset = alpaca_dataset(tokenizer, source="json", data_files=str(data))
    batch = next(iter(build_loader(dataset, batch_size=2, seed=0, pad_id=tokenizer.pad_id)))
    with torch.no_grad():
        logits = load_hf_model(folder)(batch["input_ids"]).logits
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100).item()


def test_v1_trains_from_the_base_model_and_writes_a_tunelib_adapter(tune, folder, tmp_path):
    # v1 on one prompted layer learns slowly (its zero gates must open first), so every step sees
    # the same batch: then each loss must be below the one before, whatever the data's noise.
    data = data_file(tmp_path / "data", [ROWS[5]] * 8)
    result = finetune(tune, *V1, folder, tmp_path / "out", *FAST, "optimizer.lr=0.1", data=data)
    assert result.code == 0, result.err
    losses = result.losses
    assert len(losses) == 4 and all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[0] == pytest.approx(first_batch_loss(folder, data), abs=1e-5)  # the gates start at 0
    adapter = tmp_path / "out/final/adapter"
    settings = json.loads((adapter / "tunelib_llama_adapter.json").read_text())
    assert settings["adapter"] == "v1" and settings["adapter_start_layer"] == 2
    assert sorted(load_file(adapter / "tunelib_llama_adapter.safetensors")) == [
        "model.layers.2.self_attn.adapter_gate", "model.layers.2.self_attn.adapter_prompt"]
    assert not (adapter / "adapter_config.json").exists() and not (tmp_path / "out/final/merged").exists()
    assert "tunelib.peft.load_llama_adapter" in result.out and "PeftModel" not in result.out
    with torch.no_grad():
        assert (ours(folder, adapter)(IDS) - load_hf_model(folder)(IDS).logits).abs().max() > 1e-3


def test_v2_fold_gives_transformers_the_adapter_models_logits(tune, folder, tmp_path):
    """With no prompt (start layer = layer count) all but lm_head's bias folds; the run says so."""
    result = finetune(tune, *V2, folder, tmp_path / "out", *FAST, "fold_adapter_v2=True", "model.adapter_start_layer=3")
    assert result.code == 0, result.err
    assert result.losses[-1] < result.losses[0]
    assert "merged/ will leave out the biases of lm_head" in result.out
    final = tmp_path / "out/final"
    model = ours(folder, final / "adapter")
    with torch.no_grad():
        model.lm_head.adapter_bias.zero_()  # the one part with no place in a plain HF folder
        torch.testing.assert_close(load_hf_model(final / "merged")(IDS).logits, model(IDS), atol=1e-5, rtol=1e-5)
    config = json.loads((final / "merged/config.json").read_text())
    assert config["attention_bias"] and config["mlp_bias"] and config["tie_word_embeddings"] is False


def test_resume_continues_exactly(tune, folder, tmp_path):
    import shutil

    run = (*V2, *FAST, "save_every_n_steps=2", "seed=3")
    straight = finetune(tune, *run[:2], folder, tmp_path / "a", *run[2:])
    assert straight.code == 0, straight.err
    shutil.copytree(tmp_path / "a/step_2", tmp_path / "b/step_2")  # as if the run had died after step 2
    resumed = finetune(tune, *run[:2], folder, tmp_path / "b", *run[2:], "resume_from_checkpoint=True")
    assert resumed.code == 0, resumed.err
    assert "step 2 of 4" in resumed.out and [m["step"] for m in resumed.metrics] == [3, 4]
    assert resumed.losses == straight.losses[2:]
    name = "final/adapter/tunelib_llama_adapter.safetensors"
    a, b = load_file(tmp_path / "a" / name), load_file(tmp_path / "b" / name)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("override, message", [
    ("fold_adapter_v2=True", "fold_adapter_v2=True needs model.adapter=v2"),
    ("model.adapter=null", "trains a LLaMA-Adapter but the model config adds none"),
])
def test_bad_settings_stop_before_anything_is_written(tune, folder, tmp_path, override, message):
    result = finetune(tune, *V1, folder, tmp_path / "out", override)
    assert result.code == 2 and message in result.err
    assert not (tmp_path / "out/metrics.jsonl").exists()


def test_lora_recipe_refuses_an_adapter_config(tune, folder, tmp_path):
    result = finetune(tune, "lora_finetune_single_device", "llama3_2/1B_lora_tunelib", folder, tmp_path / "out",
                      "model.adapter=v1", "model.lora_attn_modules=null", "model.apply_lora_to_mlp=False")
    assert result.code == 2 and "run adapter_finetune_single_device" in result.err


@pytest.mark.slow
def test_nf4_base_with_adapter_trains(tune, tmp_path):
    # NF4's default blocks need weights of 16384 elements: hidden 128, as many key/value heads as heads.
    folder = tiny_model_folder(tmp_path / "m", "llama3_1", hidden_size=128, intermediate_size=256,
                               num_key_value_heads=4, num_hidden_layers=3)
    result = finetune(tune, RECIPE, "llama3_1/8B_adapter_v2", folder, tmp_path / "out", *FAST,
                      "model.quantize_base=True", "fold_adapter_v2=True")
    assert result.code == 0, result.err
    assert result.losses[-1] < result.losses[0]
    merged = load_file(tmp_path / "out/final/merged/model.safetensors")
    assert all(t.dtype == torch.float32 for t in merged.values())  # dequantised and folded, never NF4 internals
