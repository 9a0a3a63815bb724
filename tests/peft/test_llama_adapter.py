"""LLaMA-Adapter v1/v2 on tunelib models: the reference parameter counts, the exact math, step 0
equal to the base model, gradients, NF4 bases, save/reload, generation with a cache, and the v2 fold."""

from __future__ import annotations

import pytest
import torch

from support.models import load_hf_model, make_hf_model_folder
from tunelib.errors import CheckpointError, ConfigError
from tunelib.peft import (
    AdapterV2Linear,
    PromptedAttention,
    adapter_params,
    apply_peft,
    fold_leaves_out,
    fold_llama_adapter_v2,
    initialize_adapters,
    is_adapter_key,
    load_llama_adapter,
    nf4_transform,
    save_llama_adapter,
    set_trainable,
)

LAYERS = 3  # the default adapter_start_layer=2 then leaves layers 0-1 plain and prompts layer 2


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """folders(family) -> a tiny 3-layer HF folder of that family, made once."""
    made = {}

    def get(family: str):
        if family not in made:
            made[family] = make_hf_model_folder(tmp_path_factory.mktemp(family), family, num_hidden_layers=LAYERS)
        return made[family]

    return get


def loaded(folder, **adapter):
    """A tunelib model from `folder` as a recipe builds it: on meta with the adapter, weights streamed in."""
    import tunelib.models
    from tunelib.checkpoint import load_hf_weights

    model = apply_peft(tunelib.models.from_hf_config(folder, **adapter))
    load_hf_weights(model, folder, dtype=torch.float32, device="cpu", transform=nf4_transform(model),
                    ignore_missing=is_adapter_key)
    initialize_adapters(model)
    return model.eval()


def randomize(model, seed: int = 1) -> None:
    """Values far from the first ones (gates open, scales off 1), so every part of the adapter matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in adapter_params(model).items():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1 + 0.2 * noise if name.endswith(("adapter_scale", "weight")) else 0.5 * noise)


IDS = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(0))


# -- sizes ------------------------------------------------------------------------------------


def _trainable(builder, **adapter) -> int:
    model = apply_peft(builder(**adapter))  # on meta: counting needs no memory
    return set_trainable(model)


def test_v1_count_is_prompt_and_gate_per_adapted_layer():
    """Reference §1.1: per adapted layer aT·C + n_head; Llama-2-7B adapts 30 of 32 layers."""
    from tunelib.models.llama2 import llama2_7b
    from tunelib.models.llama3_2 import llama3_2_1b

    assert _trainable(llama2_7b, adapter="v1") == 30 * (10 * 4096 + 32) == 1_229_760
    # Llama-3.2-1B: 16 layers (14 adapted), hidden 2048, 32 query heads (8 key/value heads do not matter).
    assert _trainable(llama3_2_1b, adapter="v1") == 14 * (10 * 2048 + 32)
    assert _trainable(llama2_7b, adapter="v1", adapter_prompt_length=4, adapter_start_layer=30) == 2 * (4 * 4096 + 32)


def test_v2_count_matches_the_reference_for_llama_2_7b():
    """Reference §2: scale+bias on every linear (q,k,v,o,gate,up,down per layer and lm_head), norms, prompts."""
    from tunelib.models.llama2 import llama2_7b

    per_layer = 2 * (3 * 4096 + 4096 + 11008 + 11008 + 4096)
    assert per_layer == 84_992
    expected = 32 * per_layer + 2 * 32000 + (32 * 2 * 4096 + 4096) + 30 * (10 * 4096 + 32)
    assert _trainable(llama2_7b, adapter="v2") == expected == 4_279_744


# -- the math -----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama3_2", "qwen2", "qwen3", "gemma2"])
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_step_zero_is_exactly_the_base_model(folders, family, version):
    folder = folders(family)
    base = loaded(folder)
    adapted = loaded(folder, adapter=version)
    with torch.no_grad():
        assert torch.equal(adapted(IDS), base(IDS))
        randomize(adapted)
        assert (adapted(IDS) - base(IDS)).abs().max() > 1e-2  # the adapter is really in the forward


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_prompt_attention_is_the_papers_math(folders, version):
    """g_h · softmax(q (W_k P)ᵀ s) (W_v P), with rotated q, unrotated real k/v projections of P,
    a softmax over the prompt alone and key/value heads shared as in grouped-query attention."""
    from tunelib.models.attention import AttentionInputs
    from tunelib.models.rope import rotate

    model = loaded(folders("llama3_2"), adapter=version)  # 4 query heads, 2 key/value heads
    randomize(model)
    attn = model.model.layers[2].self_attn
    assert isinstance(attn, PromptedAttention)
    B, T = IDS.shape
    x = torch.randn(B, T, model.config.hidden_size, generator=torch.Generator().manual_seed(2))
    cos, sin = model.model.rotary_emb(torch.arange(T).expand(B, T), x.dtype)
    inputs = AttentionInputs(cos, sin, {attn.window: None})
    with torch.no_grad():
        out = attn(x, inputs)
        gate = attn.adapter_gate.clone()
        attn.adapter_gate.zero_()
        plain = attn(x, inputs)
        heads, group, D = gate.numel(), gate.numel() // 2, attn.head_dim
        q = rotate(attn.q_proj(x).view(B, T, heads, D).transpose(1, 2), cos, sin)  # (B, H, T, D)
        P = attn.adapter_prompt
        k = attn.k_proj(P).view(-1, 2, D).transpose(0, 1).repeat_interleave(group, dim=0)  # (H, L, D)
        v = attn.v_proj(P).view(-1, 2, D).transpose(0, 1).repeat_interleave(group, dim=0)
        probs = torch.softmax(torch.einsum("bhtd,hld->bhtl", q, k) * D ** -0.5, dim=-1)
        prompted = torch.einsum("bhtl,hld->bhtd", probs, v) * gate.view(1, -1, 1, 1)
        # o_proj is linear: its bias is already in `plain`.
        expected = plain + prompted.transpose(1, 2).reshape(B, T, -1) @ _dense(attn.o_proj).T
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def _dense(linear) -> torch.Tensor:
    """The matrix a (v2-wrapped) linear applies to its input, without any bias."""
    if isinstance(linear, AdapterV2Linear):
        return linear.adapter_scale[:, None] * linear.weight
    return linear.weight


def test_v2_linear_is_scale_times_linear_plus_bias(folders):
    model = loaded(folders("qwen2"), adapter="v2")  # q/k/v have a base bias
    randomize(model)
    q = model.model.layers[0].self_attn.q_proj
    x = torch.randn(3, q.in_features)
    with torch.no_grad():
        expected = q.adapter_scale * (x @ q.weight.T + q.bias + q.adapter_bias)
        torch.testing.assert_close(q(x), expected)
    assert not isinstance(model.model.embed_tokens, AdapterV2Linear)
    assert isinstance(model.lm_head, AdapterV2Linear) and model.lm_head.weight is model.model.embed_tokens.weight


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_only_the_adapter_trains(folders, version):
    model = loaded(folders("qwen3"), adapter=version)
    set_trainable(model)
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    kinds = {name.rsplit(".", 1)[-1] if is_adapter_key(name) else "norm" for name in trained}
    if version == "v1":
        assert kinds == {"adapter_prompt", "adapter_gate"}
    else:  # every norm, the q/k norms of Qwen3 included
        assert kinds == {"adapter_prompt", "adapter_gate", "adapter_scale", "adapter_bias", "norm"}
        assert "model.layers.0.self_attn.q_norm.weight" in trained and "model.norm.weight" in trained
    randomize(model)
    model(IDS).sum().backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (name in trained), name


def test_prompts_learn_once_the_gate_opens(folders):
    """At step 0 the zero gate blocks the prompt's gradient; the gate's own gradient is not zero."""
    model = loaded(folders("llama3_2"), adapter="v1")
    set_trainable(model)
    model(IDS).sum().backward()
    attn = model.model.layers[2].self_attn
    assert attn.adapter_gate.grad.abs().sum() > 0 and attn.adapter_prompt.grad.abs().sum() == 0


# -- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize("settings, message", [
    (dict(adapter="v3"), "adapter must be 'v1', 'v2' or null"),
    (dict(adapter="v1", adapter_prompt_length=0), "adapter_prompt_length must be a positive integer"),
    (dict(adapter="v1", adapter_start_layer=-1), "adapter_start_layer must be an integer >= 0"),
    (dict(adapter="v1", adapter_start_layer=3), "adapter_start_layer=3 but the model has 3 layers"),
    (dict(adapter="v2", lora_attn_modules=["q_proj"]), "cannot be combined with LoRA"),
])
def test_bad_settings_are_config_errors(folders, settings, message):
    import tunelib.models

    with pytest.raises(ConfigError, match=message):
        apply_peft(tunelib.models.from_hf_config(folders("llama3_2"), **settings))


def test_v2_without_prompts_is_allowed():
    from tunelib.models.llama2 import llama2_7b

    model = apply_peft(llama2_7b(adapter="v2", adapter_start_layer=32))
    assert not any(isinstance(m, PromptedAttention) for m in model.modules())


# -- NF4 base -----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_nf4_base_with_adapter(tmp_path, version):
    """Decoder linears are frozen NF4; the adapter starts at the NF4 model and trains on top of it."""
    from tunelib.quantization import is_nf4

    folder = make_hf_model_folder(tmp_path, "llama3_1", num_hidden_layers=LAYERS, hidden_size=128,
                                  intermediate_size=256, num_key_value_heads=4)  # every weight a multiple of 16384
    base = loaded(folder, quantize_base=True, lora_attn_modules=["q_proj"], lora_rank=1)  # NF4, B = 0
    model = loaded(folder, adapter=version, quantize_base=True)
    assert is_nf4(model.model.layers[2].self_attn.k_proj.weight) and is_nf4(model.model.layers[0].mlp.down_proj.weight)
    with torch.no_grad():
        assert torch.equal(model(IDS), base(IDS))
    set_trainable(model)
    randomize(model)
    model(IDS).sum().backward()
    assert all((p.grad is not None) == p.requires_grad for p in model.parameters())
    assert not any(is_nf4(p) for p in adapter_params(model).values())


# -- save, reload, generate, fold ---------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_saved_adapter_reloads_with_the_same_logits(folders, tmp_path, version):
    import tunelib.checkpoint
    import tunelib.models

    folder = folders("qwen2")
    model = loaded(folder, adapter=version, adapter_prompt_length=3)
    randomize(model)
    save_llama_adapter(model, tmp_path / "adapter", base_model_name_or_path=str(folder))
    assert not (tmp_path / "adapter/adapter_config.json").exists()  # never taken for a PEFT folder
    fresh = load_llama_adapter(tunelib.checkpoint.from_pretrained(folder), tmp_path / "adapter")  # a plain model
    resumed = load_llama_adapter(loaded(folder, adapter=version, adapter_prompt_length=3), tmp_path / "adapter")
    with torch.no_grad():
        assert torch.equal(fresh(IDS), model(IDS)) and torch.equal(resumed(IDS), model(IDS))


def test_reload_refuses_what_does_not_fit(folders, tmp_path):
    import json

    import tunelib.checkpoint
    import tunelib.models

    folder = folders("llama3_2")
    save_llama_adapter(loaded(folder, adapter="v1"), tmp_path / "adapter")
    with pytest.raises(CheckpointError, match="holds adapter=v1, adapter_prompt_length=10.* model has adapter=v2"):
        load_llama_adapter(loaded(folder, adapter="v2"), tmp_path / "adapter")
    with pytest.raises(CheckpointError, match="not a tunelib LLaMA-Adapter folder"):
        load_llama_adapter(tunelib.checkpoint.from_pretrained(folder), tmp_path)
    config = tmp_path / "adapter/tunelib_llama_adapter.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "adapter_start_layer": 1}))
    with pytest.raises(CheckpointError, match="no tensor for model.layers.1.self_attn.adapter_"):
        load_llama_adapter(tunelib.checkpoint.from_pretrained(folder), tmp_path / "adapter")


def test_generation_with_a_cache_equals_the_full_forward(folders):
    model = loaded(folders("gemma2"), adapter="v2")  # sliding windows and soft-capping too
    randomize(model)
    ids = IDS[:1]
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(1, ids.shape[1])
        steps = [model(ids[:, :6], cache=cache)] + [model(ids[:, i:i + 1], cache=cache) for i in range(6, ids.shape[1])]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_v2_fold_loads_in_transformers_with_the_adapter_models_logits(folders, tmp_path):
    """Without prompts everything folds but lm_head's bias, which no HF causal LM has: exactly that differs."""
    from tunelib.checkpoint import save_hf_folder

    folder = folders("llama3_2")  # tied embeddings: the fold unties lm_head
    model = loaded(folder, adapter="v2", adapter_start_layer=LAYERS)
    randomize(model)
    assert fold_leaves_out(model) == ["the biases of lm_head (LlamaForCausalLM has no place for them)"]
    weights, updates = fold_llama_adapter_v2(model)
    assert updates == {"attention_bias": True, "mlp_bias": True, "tie_word_embeddings": False}
    save_hf_folder(weights, tmp_path / "merged", source_dir=folder, config=model.config, config_updates=updates)
    with torch.no_grad():
        theirs = load_hf_model(tmp_path / "merged")(IDS).logits
        ours = model(IDS)
        head = model.lm_head
        torch.testing.assert_close(theirs + head.adapter_scale * head.adapter_bias, ours, atol=1e-5, rtol=1e-5)
        head.adapter_bias.zero_()
        torch.testing.assert_close(theirs, model(IDS), atol=1e-5, rtol=1e-5)


def test_fold_names_what_it_leaves_out(folders):
    assert fold_leaves_out(loaded(folders("qwen2"), adapter="v2")) == [
        "the prompts and gates of layer 2",
        "the biases of down_proj, gate_proj, lm_head, o_proj, up_proj (Qwen2ForCausalLM has no place for them)",
    ]
    with pytest.raises(ValueError, match="v1 is prompts only"):
        fold_llama_adapter_v2(loaded(folders("qwen2"), adapter="v1"))


def test_every_family_format_answers_which_biases_it_holds():
    """The fold asks each HF format, by writing and reading a config back; none may fail."""
    from tunelib.models.registry import family_modules
    from tunelib.peft.llama_adapter_fold import bias_slots

    held = {}
    for module in family_modules():
        for config in getattr(module, "SIZES", {}).values():
            slots = bias_slots(config)
            held[config.architecture] = (slots.qkv_bias, slots.o_bias, slots.mlp_bias)
    assert held["LlamaForCausalLM"] == (True, True, True)
    assert held["Qwen2ForCausalLM"] == (True, False, False)
    assert held["MistralForCausalLM"] == (False, False, False)
    assert held["Qwen3ForCausalLM"] == held["Gemma2ForCausalLM"] == (True, True, False)
