"""`tune run quantize`: int8 weight-only folders (torchao) that generate, transformers and the
evaluation load, with logits close to the unquantized model; int4 on CUDA only; one-line errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tunelib.generation import load_model

IDS = torch.randint(0, 700, (2, 12), generator=torch.Generator().manual_seed(0))


def quantize(tune, *overrides):
    return tune("run", "quantize", "--config", "quantization", "device=cpu", *overrides)


def logits(folder, **kwargs):
    with torch.no_grad():
        return load_model(folder, dtype="auto", device="cpu", **kwargs).model(IDS)


def assert_close_to(quantized: torch.Tensor, plain: torch.Tensor) -> None:
    """int8 with one scale per row: within a few percent of the logits' range, same top tokens mostly."""
    assert (quantized - plain).abs().max() <= 0.05 * plain.abs().max()
    assert (quantized.argmax(-1) == plain.argmax(-1)).float().mean() >= 0.9
    assert not torch.equal(quantized, plain)  # it really is quantized


@pytest.fixture(scope="module")
def int8_folder(trained, tmp_path_factory):
    from tunelib.cli.main import main

    out = tmp_path_factory.mktemp("quantized") / "merged-int8"
    assert main(["run", "quantize", "--config", "quantization", f"checkpoint_dir={trained.lora / 'merged'}",
                 f"output_dir={out}", "device=cpu"]) == 0
    return out


def test_int8_folder_is_small_safetensors_with_torchao_weights(int8_folder, trained):
    from torchao.quantization import Int8Tensor

    config = json.loads((int8_folder / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "torchao"
    assert config["quantization_config"]["quant_type"]["default"]["_type"] == "Int8WeightOnlyConfig"
    assert not list(int8_folder.glob("*.bin")) and not list(int8_folder.glob("*.pt"))  # no pickles
    assert (int8_folder / "tokenizer.json").is_file() and (int8_folder / "generation_config.json").is_file()
    size = sum(f.stat().st_size for f in int8_folder.glob("*.safetensors"))
    assert size < 0.8 * sum(f.stat().st_size for f in (trained.lora / "merged").glob("*.safetensors"))
    model = load_model(int8_folder, device="cpu").model
    assert isinstance(model.model.layers[0].self_attn.q_proj.weight, Int8Tensor)
    assert not isinstance(model.model.embed_tokens.weight, Int8Tensor)  # embeddings keep their precision


def test_int8_logits_are_close_and_transformers_loads_it(int8_folder, trained):
    transformers = pytest.importorskip("transformers")
    ours = logits(int8_folder)
    assert_close_to(ours, logits(trained.lora / "merged"))
    with torch.no_grad():
        theirs = transformers.AutoModelForCausalLM.from_pretrained(int8_folder).eval()(IDS).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


def test_generate_and_chat_run_on_the_quantized_folder(tune, int8_folder, trained):
    code, out, err = tune("run", "generate", "--config", "generation", f"checkpoint_dir={int8_folder}", "prompt=Hi",
                          "temperature=0", "max_new_tokens=6", "device=cpu")
    assert code == 0, err
    assert "Int8WeightOnlyConfig" in err and "6 tokens in" in err and out.strip()


def test_base_plus_adapter_is_merged_then_quantized(tune, trained, tmp_path):
    out = tmp_path / "int8"
    code, stdout, err = quantize(tune, f"checkpoint_dir={trained.base}", f"adapter_dir={trained.dora}",
                                 f"output_dir={out}")
    assert code == 0, err
    # DoRA on the tied output layer: the quantized folder must untie it, like the merged one.
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    assert_close_to(logits(out), logits(trained.base, adapter_dir=trained.dora))


def test_the_default_output_folder_is_beside_the_input(tune, trained, tmp_path):
    source = tmp_path / "model"
    shutil.copytree(trained.full, source)
    code, stdout, err = quantize(tune, f"checkpoint_dir={source}")
    assert code == 0, err
    assert (tmp_path / "model-int8" / "config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


@pytest.mark.parametrize("overrides, message", [
    (["scheme=int4"], "scheme=int4 needs a CUDA GPU"),
    (["checkpoint_dir={int8}"], "is quantized already"),
    (["output_dir={int8}"], "already exists"),
    (["adapter_dir={adapter_v2}"], "is a LLaMA-Adapter"),
    (["scheme=int2"], "scheme"),
])
def test_bad_input_is_one_line_and_exit_2(tune, trained, int8_folder, tmp_path, overrides, message):
    words = [o.format(int8=int8_folder, adapter_v2=trained.adapter_v2) for o in overrides]
    code, out, err = quantize(tune, f"checkpoint_dir={trained.base}", f"output_dir={tmp_path / 'out'}", *words)
    assert code == 2
    assert err.startswith("tune: error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_an_int4_folder_is_refused_on_the_cpu(tune, int8_folder, tmp_path):
    folder = tmp_path / "int4"
    shutil.copytree(int8_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"]["quant_type"]["default"]["_type"] = "Int4WeightOnlyConfig"
    (folder / "config.json").write_text(json.dumps(config))
    code, out, err = tune("run", "generate", "--config", "generation", f"checkpoint_dir={folder}", "prompt=Hi",
                          "device=cpu")
    assert code == 2 and "int4 weights" in err and "CUDA GPU only" in err


def test_int4_config_groups():
    from tunelib.quantization.weight_only import torchao_config

    config = torchao_config("int4", 64)
    assert type(config).__name__ == "Int4WeightOnlyConfig" and config.group_size == 64


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="int4 weight-only needs CUDA (torchao's tinygemm kernel)")
def test_int4_on_cuda_generates_with_close_logits(tune, trained, tmp_path):
    out = tmp_path / "int4"
    code, _, err = tune("run", "quantize", "--config", "quantization", f"checkpoint_dir={trained.full}",
                        f"output_dir={out}", "scheme=int4", "group_size=32", "device=cuda")
    assert code == 0, err
    with torch.no_grad():
        quantized = load_model(out, device="cuda").model(IDS.cuda()).float().cpu()
        plain = load_model(trained.full, dtype="bf16", device="cuda").model(IDS.cuda()).float().cpu()
    assert (quantized - plain).abs().max() <= 0.15 * plain.abs().max()
    code, text, err = tune("run", "generate", "--config", "generation", f"checkpoint_dir={out}", "prompt=Hi",
                           "temperature=0", "max_new_tokens=4", "device=cuda")
    assert code == 0, err
