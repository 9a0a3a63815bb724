"""`tune run lora_finetune_single_device` on tiny models: losses, outputs that load in
transformers and PEFT with our logits, exact gradient accumulation, DoRA and QLoRA."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from support.models import load_hf_model
from support.recipes import finetune, tiny_model_folder

LORA = ("lora_finetune_single_device", "llama3_2/1B_lora_tunelib")
FAST = ("lr_scheduler.num_warmup_steps=0", "optimizer.lr=3e-3")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("models"), "llama3_2")  # tied embeddings


def ours_with_adapter(folder, adapter_dir):
    """Our model: the base folder plus the saved adapter, through tunelib's own loading."""
    import tunelib.checkpoint
    from tunelib.peft import load_peft_adapter

    model = tunelib.checkpoint.from_pretrained(folder, dtype=torch.float32)
    return load_peft_adapter(model, adapter_dir).eval()


def test_lora_trains_and_writes_peft_and_merged_folders(tune, folder, tmp_path):
    result = finetune(tune, *LORA, folder, tmp_path / "out", *FAST, "model.apply_lora_to_output=True")
    assert result.code == 0, result.err
    losses = result.losses
    assert len(losses) == 4 and losses[-1] < losses[0]
    final = tmp_path / "out/final"
    assert (final / "adapter/adapter_config.json").is_file() and (final / "adapter/adapter_model.safetensors").is_file()
    assert (final / "merged/config.json").is_file() and not (final / "merged/adapter_config.json").exists()
    assert "Done. Output:" in result.out and "PeftModel.from_pretrained" in result.out
    for key in ("step", "loss", "lr", "tokens_per_second"):
        assert key in result.metrics[0]


def test_outputs_load_in_transformers_and_peft_with_our_logits(tune, folder, tmp_path):
    from peft import PeftModel

    result = finetune(tune, *LORA, folder, tmp_path / "out", *FAST, "model.apply_lora_to_output=True")
    assert result.code == 0, result.err
    final = tmp_path / "out/final"
    ids = torch.randint(0, 700, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = ours_with_adapter(folder, final / "adapter")(ids)
        merged = load_hf_model(final / "merged")(ids).logits
        peft_model = PeftModel.from_pretrained(load_hf_model(folder), str(final / "adapter")).eval()
        peft_logits = peft_model(ids).logits
    base = load_hf_model(folder)(ids).logits
    assert (ours - base).abs().max() > 1e-3  # training changed something
    torch.testing.assert_close(merged, ours, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(peft_logits, ours, atol=1e-5, rtol=1e-5)
    # lm_head got its own LoRA on a tied model: the merged folder unties it.
    assert json.loads((final / "merged/config.json").read_text())["tie_word_embeddings"] is False


def test_zero_learning_rate_writes_the_input_weights(tune, folder, tmp_path):
    result = finetune(tune, *LORA, folder, tmp_path / "out", "optimizer.lr=0")
    assert result.code == 0, result.err
    before = load_file(folder / "model.safetensors")
    after = load_file(tmp_path / "out/final/merged/model.safetensors")
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key


def test_gradient_accumulation_matches_a_bigger_batch(tune, folder, tmp_path):
    big = finetune(tune, *LORA, folder, tmp_path / "a", *FAST, "batch_size=4", "gradient_accumulation_steps=1")
    small = finetune(tune, *LORA, folder, tmp_path / "b", *FAST, "batch_size=2", "gradient_accumulation_steps=2")
    assert big.code == 0 and small.code == 0, big.err + small.err
    assert len(big.losses) == len(small.losses) == 4
    for a, b in zip(big.losses, small.losses):
        assert abs(a - b) <= 1e-6, (big.losses, small.losses)


def test_first_loss_equals_transformers_on_the_same_batch(tune, folder, tmp_path):
    """Step 1's loss is the base model's loss (B = 0), so transformers must agree on that batch."""
    from tunelib.data import alpaca_dataset, build_loader
    from tunelib.tokenizers import from_pretrained

    result = finetune(tune, *LORA, folder, tmp_path / "out", "max_steps_per_epoch=1")
    assert result.code == 0, result.err
    tokenizer = from_pretrained(folder, max_seq_len=256)
    dataset = alpaca_dataset(tokenizer, source="json", data_files=str(tmp_path / "train.jsonl"))
    batch = next(iter(build_loader(dataset, batch_size=2, seed=0, pad_id=tokenizer.pad_id)))
    with torch.no_grad():
        logits = load_hf_model(folder)(batch["input_ids"]).logits
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
    assert result.losses[0] == pytest.approx(expected.item(), abs=1e-5)


def test_dora_trains_and_loads_in_peft(tune, folder, tmp_path):
    from peft import PeftModel

    result = finetune(tune, "lora_finetune_single_device", "llama3_2/1B_dora", folder, tmp_path / "out", *FAST)
    assert result.code == 0, result.err
    assert result.losses[-1] < result.losses[0]
    adapter = tmp_path / "out/final/adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["use_dora"] is True
    ids = torch.randint(0, 700, (1, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = ours_with_adapter(folder, adapter)(ids)
        theirs = PeftModel.from_pretrained(load_hf_model(folder), str(adapter)).eval()(ids).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_qlora_trains_with_nf4_base(tune, tmp_path):
    # NF4's default blocks need weights of 16384 elements: hidden 128.
    folder = tiny_model_folder(tmp_path / "m", "llama3_1", hidden_size=128, intermediate_size=256, num_key_value_heads=4)
    result = finetune(tune, "lora_finetune_single_device", "llama3_1/8B_qlora", folder, tmp_path / "out", *FAST)
    assert result.code == 0, result.err
    assert result.losses[-1] < result.losses[0]
    merged = load_file(tmp_path / "out/final/merged/model.safetensors")
    assert all(t.dtype == torch.float32 for t in merged.values())  # dequantised, never NF4 internals


def test_save_adapter_weights_only_and_step_checkpoints(tune, folder, tmp_path):
    result = finetune(tune, *LORA, folder, tmp_path / "out", *FAST, "save_adapter_weights_only=True",
                      "save_every_n_steps=2")
    assert result.code == 0, result.err
    assert not (tmp_path / "out/final/merged").exists()
    assert (tmp_path / "out/step_2/adapter/adapter_model.safetensors").is_file()
    assert (tmp_path / "out/step_2/training_state.pt").is_file()
    assert (tmp_path / "out/config.yaml").is_file()


def test_recipe_file_runs_as_a_script(folder, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from support.recipes import data_file

    repo = Path(__file__).resolve().parents[2]
    data = data_file(tmp_path)
    cmd = [sys.executable, str(repo / "recipes/lora_finetune.py"), "--config", "llama3_2/1B_lora_tunelib",
           f"checkpoint_dir={folder}", f"output_dir={tmp_path / 'out'}", "model._component_=tunelib.models.from_hf_config",
           "tokenizer._component_=tunelib.tokenizers.from_pretrained", "dataset.source=json",
           f"dataset.data_files={data}", "dtype=fp32", "device=cpu", "max_steps_per_epoch=2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out/final/adapter/adapter_model.safetensors").is_file()
