"""`tune export gguf`: the file read back with gguf's own reader holds llama.cpp's metadata, the
tokenizer, and every weight in the layout llama.cpp reads (checked against the safetensors,
with llama.cpp's conventions written out independently below), for every supported family."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

gguf = pytest.importorskip("gguf")

FAMILIES = ["llama2", "llama3_2", "llama3_1", "mistral", "qwen2", "qwen2_5", "qwen3", "gemma", "gemma2", "phi3"]

# HF name inside a layer -> llama.cpp's name inside `blk.N.` (Gemma 2 overrides two below).
LAYER_NAMES = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm", "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down", "self_attn.qkv_proj": "attn_qkv",
    "mlp.gate_up_proj": "ffn_up",
}
GEMMA2_NAMES = {"post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
                "post_feedforward_layernorm": "post_ffw_norm"}
TOP_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}


def field(reader: gguf.GGUFReader, key: str):
    """A metadata value (None when absent)."""
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def tensors(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    """name -> (GGML type name, values as float32 in the HF shape)."""
    reader = gguf.GGUFReader(path)
    out = {}
    for t in reader.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        out[t.name] = (t.tensor_type.name, values.reshape([int(n) for n in reversed(t.shape)]))
    return out


def gguf_name(hf_name: str, gemma2: bool = False) -> str:
    if hf_name in TOP_NAMES:
        return TOP_NAMES[hf_name]
    layer, inner, kind = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", hf_name).groups()
    names = {**LAYER_NAMES, **GEMMA2_NAMES} if gemma2 else LAYER_NAMES
    return f"blk.{layer}.{names[inner]}.{kind}"


def interleaved(rows: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF's half-rotation q/k rows in llama.cpp's order: in each head, row 2i is HF row i and
    row 2i+1 is HF row i + d/2."""
    d = rows.shape[0] // n_heads
    order = [h * d + half * (d // 2) + i for h in range(n_heads) for i in range(d // 2) for half in (0, 1)]
    return rows[order]


def expected(folder: Path, config: dict) -> dict[str, torch.Tensor]:
    """What llama.cpp should find in the file, by name, from the folder's safetensors."""
    arch = config["architectures"][0]
    gemma = arch.startswith("Gemma")
    out = {}
    for hf_name, value in load_file(folder / "model.safetensors").items():
        value = value.float()
        if arch in ("LlamaForCausalLM", "MistralForCausalLM") and ".q_proj." in hf_name:
            value = interleaved(value, config["num_attention_heads"])
        elif arch in ("LlamaForCausalLM", "MistralForCausalLM") and ".k_proj." in hf_name:
            value = interleaved(value, config["num_key_value_heads"])
        elif gemma and hf_name.endswith("norm.weight"):
            value = value + 1
        out[gguf_name(hf_name, gemma2=arch == "Gemma2ForCausalLM")] = value
    return out


def hf_config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


# -- weights ---------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_every_weight_is_there_in_llama_cpp_layout(family, tiny, exported):
    folder = tiny(family)
    config = hf_config(folder)
    got = tensors(exported(family, "f32"))
    want = expected(folder, config)
    if config["architectures"][0] == "Phi3ForCausalLM":  # the HF folder fuses q/k/v and gate/up, as llama.cpp reads them
        assert "blk.0.attn_qkv.weight" in want and "blk.0.attn_q.weight" not in got
    extra = set(got) - set(want)
    assert extra == ({"rope_freqs.weight"} if family in ("llama3_1", "llama3_2") else set())
    assert set(want) <= set(got)
    for name, value in want.items():
        kind, stored = got[name]
        assert kind == "F32"
        np.testing.assert_array_equal(stored, value.numpy(), err_msg=name)


def test_tied_embeddings_write_no_output_layer(tiny, exported):
    assert hf_config(tiny("qwen2"))["tie_word_embeddings"] is True
    assert "output.weight" not in tensors(exported("qwen2", "f32"))
    assert "output.weight" in tensors(exported("llama2", "f32"))


def test_f16_and_bf16_round_matrices_and_keep_norms_in_f32(tiny, exported):
    want = expected(tiny("qwen3"), hf_config(tiny("qwen3")))
    for outtype, dtype in (("f16", torch.float16), ("bf16", torch.bfloat16)):
        got = tensors(exported("qwen3", outtype))
        assert got["blk.0.attn_q.weight"][0] == outtype.upper()
        np.testing.assert_array_equal(got["blk.0.attn_q.weight"][1], want["blk.0.attn_q.weight"].to(dtype).float().numpy())
        assert got["blk.0.attn_q_norm.weight"][0] == "F32"
        np.testing.assert_array_equal(got["blk.0.attn_q_norm.weight"][1], want["blk.0.attn_q_norm.weight"].numpy())


def test_q8_0_is_within_a_quantization_step_of_each_weight(tiny, exported):
    want = expected(tiny("llama3_2"), hf_config(tiny("llama3_2")))
    got = tensors(exported("llama3_2", "q8_0"))
    assert gguf.GGUFReader(exported("llama3_2", "q8_0")).fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0
    for name in ("token_embd.weight", "blk.1.attn_k.weight", "blk.0.ffn_down.weight"):
        kind, stored = got[name]
        assert kind == "Q8_0"
        value = want[name].numpy()
        blocks = value.reshape(-1, 32)
        step = np.abs(blocks).max(axis=1, keepdims=True) / 127  # one int8 step of each block of 32
        error = np.abs(stored.reshape(-1, 32) - blocks)
        # Half a step from rounding to int8, plus the f16 scale's rounding (2**-11 of it) times up to 127.
        assert (error <= step * (0.5 + 127 / 2048) + 1e-7).all(), name
        assert error.max() > 0  # it really was quantized
    assert got["blk.0.attn_norm.weight"][0] == "F32"


def test_llama3_1_rope_scaling_travels_as_frequency_factors(tiny, exported):
    """rope_freqs holds, per frequency, what Llama 3.1's scaling divides it by (transformers' numbers)."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = LlamaConfig.from_pretrained(tiny("llama3_1"))
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    dim = config.hidden_size // config.num_attention_heads
    plain = 1.0 / (config.rope_parameters["rope_theta"] ** (torch.arange(0, dim, 2).float() / dim))
    factors = tensors(exported("llama3_1", "f32"))["rope_freqs.weight"][1]
    np.testing.assert_allclose(factors, (plain / scaled).numpy(), rtol=1e-5)
    assert factors.min() == 1.0 and factors.max() == 8.0  # both ends of the blend are reached


# -- metadata --------------------------------------------------------------------------------

ARCH = {"llama2": "llama", "llama3_2": "llama", "llama3_1": "llama", "mistral": "llama", "qwen2": "qwen2",
        "qwen2_5": "qwen2", "qwen3": "qwen3", "gemma": "gemma", "gemma2": "gemma2", "phi3": "phi3"}


@pytest.mark.parametrize("family", FAMILIES)
def test_architecture_metadata_is_llama_cpp_s(family, tiny, exported):
    config = hf_config(tiny(family))
    reader = gguf.GGUFReader(exported(family, "f32"))
    arch = ARCH[family]
    assert field(reader, "general.architecture") == arch
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    rope = config.get("rope_parameters") or {}
    want = {"context_length": config["max_position_embeddings"], "embedding_length": config["hidden_size"],
            "block_count": config["num_hidden_layers"], "feed_forward_length": config["intermediate_size"],
            "attention.head_count": config["num_attention_heads"],
            "attention.head_count_kv": config["num_key_value_heads"],
            "attention.key_length": head_dim, "attention.value_length": head_dim,
            "rope.dimension_count": head_dim,
            "rope.freq_base": rope.get("rope_theta", config.get("rope_theta", 10000.0)),
            "attention.layer_norm_rms_epsilon": config["rms_norm_eps"]}
    for key, value in want.items():
        assert field(reader, f"{arch}.{key}") == pytest.approx(value), key
    if family == "gemma2":
        assert field(reader, "gemma2.attn_logit_softcapping") == pytest.approx(5.0)
        assert field(reader, "gemma2.final_logit_softcapping") == pytest.approx(3.0)
        assert field(reader, "gemma2.attention.sliding_window") == 4
    if family == "phi3":
        assert field(reader, "phi3.attention.sliding_window") == 6


# -- tokenizer -------------------------------------------------------------------------------

TOKENIZER_MODEL = {"llama2": "llama", "mistral": "llama", "gemma": "llama", "gemma2": "llama", "phi3": "llama",
                   "llama3_2": "gpt2", "llama3_1": "gpt2", "qwen2": "gpt2", "qwen2_5": "gpt2", "qwen3": "gpt2"}
PRE = {"llama3_2": "llama-bpe", "llama3_1": "llama-bpe", "qwen2": "qwen2", "qwen2_5": "qwen2", "qwen3": "qwen2"}


@pytest.mark.parametrize("family", FAMILIES)
def test_the_token_list_is_the_tokenizer_s(family, tiny, exported):
    from tokenizers import Tokenizer

    folder = tiny(family)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    reader = gguf.GGUFReader(exported(family, "f32"))
    tokens = field(reader, "tokenizer.ggml.tokens")
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    assert tokens[:size] == [tokenizer.id_to_token(i) for i in range(size)]
    assert tokens[size:] == [f"[PAD{i}]" for i in range(size, hf_config(folder)["vocab_size"])]
    assert field(reader, "tokenizer.ggml.model") == TOKENIZER_MODEL[family]
    assert field(reader, "tokenizer.ggml.pre") == PRE.get(family, "default")
    for kind, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("pad", "padding_token_id")):
        if settings.get(f"{kind}_token"):
            assert field(reader, f"tokenizer.ggml.{key}") == tokenizer.token_to_id(settings[f"{kind}_token"]), kind
    assert field(reader, "tokenizer.chat_template") == settings["chat_template"]
    types = field(reader, "tokenizer.ggml.token_type")
    for token_id in [i for i in range(size) if tokenizer.id_to_token(i) in (settings.get("eos_token"), "<|im_start|>")]:
        assert types[token_id] == gguf.TokenType.CONTROL
    if TOKENIZER_MODEL[family] == "gpt2":
        merges = json.loads((folder / "tokenizer.json").read_text())["model"]["merges"]
        assert field(reader, "tokenizer.ggml.merges") == [m if isinstance(m, str) else " ".join(m) for m in merges]
    else:
        assert len(field(reader, "tokenizer.ggml.scores")) == len(tokens)
        assert field(reader, "tokenizer.ggml.add_space_prefix") is (family not in ("gemma", "gemma2"))


# -- adapters, folders, errors ---------------------------------------------------------------


@pytest.mark.parametrize("family, targets, checked", [
    ("qwen2", ["q_proj", "down_proj"], ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"]),
    # Phi-3's fused projections: tunelib splits them to merge, the export fuses them again.
    ("phi3", ["qkv_proj", "gate_up_proj"], ["model.layers.0.self_attn.qkv_proj.weight", "model.layers.1.mlp.gate_up_proj.weight"]),
])
def test_a_peft_adapter_is_merged_onto_its_base(tiny, tmp_path, family, targets, checked):
    """PEFT's own merge of its own adapter is what the file holds (base found from adapter_config)."""
    peft = pytest.importorskip("peft")
    from support.models import load_hf_model
    from tunelib.export import export_gguf

    base = tiny(family)
    model = peft.get_peft_model(load_hf_model(base), peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # PEFT starts B at zero, which would merge to nothing
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    model.save_pretrained(tmp_path / "adapter")
    merged = {k: v.detach() for k, v in model.merge_and_unload().state_dict().items()}

    export_gguf(tmp_path / "adapter", tmp_path / "a.gguf", outtype="f32")
    got = tensors(tmp_path / "a.gguf")
    original = load_file(base / "model.safetensors")
    for hf_name in checked:
        stored = got[gguf_name(hf_name)][1]
        np.testing.assert_allclose(stored, merged[hf_name].numpy(), atol=1e-6, err_msg=hf_name)
        assert np.abs(stored - original[hf_name].numpy()).max() > 1e-2  # the adapter changed it
    untouched = "model.layers.0.self_attn.o_proj.weight"
    np.testing.assert_array_equal(got[gguf_name(untouched)][1], original[untouched].numpy())


def test_a_run_output_folder_exports_its_final_model(tiny, exported, tmp_path):
    from tunelib.export import export_gguf

    run = tmp_path / "run"
    shutil.copytree(tiny("qwen3"), run / "final")
    (run / "config.yaml").write_text("seed: 1\n")
    export_gguf(run, tmp_path / "run.gguf", outtype="f32")
    reader = gguf.GGUFReader(tmp_path / "run.gguf")
    assert field(reader, "general.name") == "run"
    got, want = tensors(tmp_path / "run.gguf"), tensors(exported("qwen3", "f32"))
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name][1], want[name][1])


def test_the_cli_writes_the_file_and_refuses_to_overwrite(tune, tiny, tmp_path):
    out = tmp_path / "m.gguf"
    code, stdout, err = tune("export", "gguf", str(tiny("gemma")), "-o", str(out), "--outtype", "q8_0")
    assert code == 0, err
    assert f"GGUF file: {out.resolve()}" in stdout and "llama-cli -m" in stdout
    first = out.read_bytes()
    code, _, err = tune("export", "gguf", str(tiny("gemma")), "-o", str(out))
    assert code == 2 and err.count("\n") == 1 and "already exists; pass --force" in err
    assert out.read_bytes() == first
    code, _, err = tune("export", "gguf", str(tiny("gemma")), "-o", str(out), "--force", "--outtype", "f32")
    assert code == 0, err
    assert out.read_bytes() != first
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]  # no temporary file left


@pytest.mark.parametrize("words, message", [
    (["{tmp}/missing", "-o", "{tmp}/x.gguf"], "does not exist"),
    (["{llama}", "-o", "{tmp}/x.gguf", "--outtype", "q4_k"], "unknown --outtype 'q4_k'; choose one of f32, f16, bf16, q8_0"),
    (["{tmp}/adapter", "-o", "{tmp}/x.gguf"], "give its base model folder with --base; it names 'org/not-here'"),
    (["{tmp}/moe", "-o", "{tmp}/x.gguf"], "is a Qwen3MoeForCausalLM; GGUF export supports LlamaForCausalLM"),
])
def test_bad_input_is_one_line_and_exit_2(tune, tiny, tmp_path, words, message):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/not-here"}))
    (tmp_path / "moe").mkdir()
    config = {**hf_config(tiny("qwen3")), "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
              "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32}
    (tmp_path / "moe" / "config.json").write_text(json.dumps(config))
    code, _, err = tune("export", "gguf", *[w.format(tmp=tmp_path, llama=tiny("llama2")) for w in words])
    assert code == 2
    assert err.startswith("tune: error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "x.gguf").exists()


def test_the_export_command_a_run_prints_works_as_printed(tune, tiny, tmp_path):
    import shlex

    from tunelib.training.report import next_commands

    run = tmp_path / "run"
    shutil.copytree(tiny("llama2"), run / "final")
    line = next_commands(run / "final", str(tiny("llama2")), adapter=False, merged=False, prompt=None)[-1]
    words = shlex.split(line)
    assert words[:3] == ["tune", "export", "gguf"]
    code, _, err = tune(*words[1:])
    assert code == 0, err
    assert field(gguf.GGUFReader(run / "model.gguf"), "general.architecture") == "llama"


@pytest.mark.parametrize("family, overrides, note", [
    ("mistral", {}, "llama.cpp runs MistralForCausalLM without its sliding window (4 tokens)"),
    ("gemma2", {}, "llama.cpp scales Gemma 2 attention by head_dim (32), not by query_pre_attn_scalar (24)"),
    ("gemma2", {"query_pre_attn_scalar": 32}, None),
])
def test_what_llama_cpp_computes_differently_is_said(tune, tiny, tmp_path, family, overrides, note):
    code, out, err = tune("export", "gguf", str(tiny(family, **overrides)), "-o", str(tmp_path / "m.gguf"))
    assert code == 0, err
    notes = [line for line in out.splitlines() if line.startswith("note: ")]
    assert (len(notes) == 1 and note in notes[0]) if note else notes == []


def test_without_the_gguf_package_the_cli_says_how_to_get_it(tune, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    code, _, err = tune("export", "gguf", str(tmp_path), "-o", str(tmp_path / "x.gguf"))
    assert code == 2 and err == "tune: error: tune export gguf needs the gguf package: pip install 'tunelib[gguf]'\n"


def test_gemma_s_output_layer_must_be_its_embedding(tiny, tmp_path):
    """A Gemma folder that also stores lm_head: a copy of the embedding is dropped, another one refused."""
    from safetensors.torch import save_file

    from tunelib.errors import CheckpointError
    from tunelib.export import export_gguf

    folder = tmp_path / "gemma"
    shutil.copytree(tiny("gemma"), folder)
    weights = load_file(folder / "model.safetensors")
    save_file({**weights, "lm_head.weight": weights["model.embed_tokens.weight"].clone()}, folder / "model.safetensors",
              metadata={"format": "pt"})
    export_gguf(folder, tmp_path / "copy.gguf", outtype="f32")
    assert "output.weight" not in tensors(tmp_path / "copy.gguf")
    save_file({**weights, "lm_head.weight": weights["model.embed_tokens.weight"] * 2}, folder / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="lm_head differs from its embedding"):
        export_gguf(folder, tmp_path / "other.gguf")
    assert not (tmp_path / "other.gguf").exists()
