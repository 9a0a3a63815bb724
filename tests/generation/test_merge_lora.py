"""`tune merge_lora`: our LoRA/DoRA adapters and an adapter made by PEFT itself, merged into an HF
folder whose transformers logits equal PEFT's base-plus-adapter logits; one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("peft")

IDS = torch.randint(0, 700, (2, 12), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("which", ["lora", "dora"])
def test_our_adapter_merged_gives_peft_logits(tune, trained, tmp_path, which, hf_logits, peft_logits):
    adapter = getattr(trained, which) / "adapter"
    out = tmp_path / "merged"
    code, stdout, err = tune("merge_lora", "--adapter", str(adapter), "--base", str(trained.base),
                             "--output-dir", str(out))
    assert code == 0, err
    assert f"vllm serve {out.resolve()}" in stdout
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    assert not (out / "adapter_config.json").exists()  # transformers would apply it a second time
    expected = peft_logits(trained.base, adapter, IDS)
    assert (expected - hf_logits(trained.base, IDS)).abs().max() > 1e-3  # the adapter matters
    torch.testing.assert_close(hf_logits(out, IDS), expected, atol=1e-5, rtol=1e-5)
    if which == "dora":  # its adapter is on the tied output layer: the merged folder unties it
        assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False


def test_a_peft_made_adapter_on_the_base_named_in_it(tune, trained, tmp_path, hf_logits, peft_logits):
    """An adapter PEFT wrote itself (all linear layers, rsLoRA, per-module ranks); --base comes
    from its base_model_name_or_path."""
    from peft import LoraConfig, get_peft_model

    from support.models import load_hf_model

    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", use_rslora=True,
                        rank_pattern={"v_proj": 2}, lora_dropout=0.0)
    model = get_peft_model(load_hf_model(trained.base), config)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # PEFT starts B at zero, which would merge to nothing
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    adapter = tmp_path / "peft_adapter"
    model.save_pretrained(adapter)
    saved = json.loads((adapter / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(trained.base)

    out = tmp_path / "merged"
    code, _, err = tune("merge_lora", "--adapter", str(adapter), "--output-dir", str(out))
    assert code == 0, err
    torch.testing.assert_close(hf_logits(out, IDS), peft_logits(trained.base, adapter, IDS), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--adapter", "{tmp}/missing", "--base", "{base}"], "does not exist"),
    (["--adapter", "{base}", "--base", "{base}"], "holds no adapter"),
    (["--adapter", "{lora}/adapter", "--base", "{tmp}/missing"], "does not exist"),
    (["--adapter", "{lora}/adapter", "--base", "{lora}/adapter"], "is an adapter, not a model"),
    (["--adapter", "{adapter_v2}", "--base", "{base}"], "is a LLaMA-Adapter"),
    (["--adapter", "{lora}/adapter", "--base", "{base}", "--output-dir", "{lora}"], "already exists"),
    (["--adapter", "{lora}/adapter", "--base", "{base}", "--output-dir", "{lora}/adapter/inside"], "inside"),
])
def test_bad_input_is_one_line_and_exit_2(tune, trained, tmp_path, args, message):
    words = [a.format(tmp=tmp_path, base=trained.base, lora=trained.lora, adapter_v2=trained.adapter_v2) for a in args]
    if "--output-dir" not in words:
        words += ["--output-dir", str(tmp_path / "out")]
    code, out, err = tune("merge_lora", *words)
    assert code == 2
    assert err.startswith("tune: error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists() and not (trained.lora / "adapter" / "inside").exists()


def test_an_adapter_naming_no_local_base_asks_for_base(tune, trained, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    for f in (trained.lora / "adapter").iterdir():
        (adapter / f.name).write_bytes(f.read_bytes())
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "meta-llama/X"}))
    code, _, err = tune("merge_lora", "--adapter", str(adapter), "--output-dir", str(tmp_path / "out"))
    assert code == 2 and "--base" in err and "meta-llama/X" in err
