"""Mixture-of-experts models: published sizes, routing, the load-balancing loss, expert keys.

Logits and saved folders of the tiny Qwen3-MoE and Mixtral models are checked against
transformers in test_parity.py (both are in support.models.FAMILIES).
"""

from __future__ import annotations

import json

import pytest
import torch

from support.models import make_hf_model
from tunelib.checkpoint import from_pretrained, load_hf_weights
from tunelib.errors import CheckpointError
from tunelib.models import DecoderConfig, builders, config_from_dict, from_hf_config
from tunelib.models.moe import Groups, MoE, grouped_mm, moe_layers, router_aux_loss

QWEN3_MOE_COMMON = {"architectures": ["Qwen3MoeForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
                    "bos_token_id": 151643, "decoder_sparse_step": 1, "eos_token_id": 151645, "head_dim": 128,
                    "hidden_act": "silu", "initializer_range": 0.02, "max_position_embeddings": 40960,
                    "mlp_only_layers": [], "model_type": "qwen3_moe", "norm_topk_prob": True, "num_experts": 128,
                    "num_experts_per_tok": 8, "num_key_value_heads": 4, "output_router_logits": False,
                    "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000.0,
                    "router_aux_loss_coef": 0.001, "sliding_window": None, "tie_word_embeddings": False,
                    "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936}
MIXTRAL_COMMON = {"architectures": ["MixtralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1,
                  "eos_token_id": 2, "hidden_act": "silu", "initializer_range": 0.02, "model_type": "mixtral",
                  "num_experts_per_tok": 2, "num_key_value_heads": 8, "num_local_experts": 8,
                  "output_router_logits": False, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
                  "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
                  "vocab_size": 32000}

# The config.json files of Qwen/Qwen3-30B-A3B, Qwen/Qwen3-235B-A22B, mistralai/Mixtral-8x7B-v0.1
# and mistralai/Mixtral-8x22B-v0.1 as published.
PUBLISHED = {
    "qwen3_moe_30b_a3b": {**QWEN3_MOE_COMMON, "hidden_size": 2048, "intermediate_size": 6144,
                          "max_window_layers": 48, "moe_intermediate_size": 768, "num_attention_heads": 32,
                          "num_hidden_layers": 48},
    "qwen3_moe_235b_a22b": {**QWEN3_MOE_COMMON, "hidden_size": 4096, "intermediate_size": 12288,
                            "max_window_layers": 94, "moe_intermediate_size": 1536, "num_attention_heads": 64,
                            "num_hidden_layers": 94},
    "mixtral_8x7b": {**MIXTRAL_COMMON, "hidden_size": 4096, "intermediate_size": 14336,
                     "max_position_embeddings": 32768, "num_attention_heads": 32, "num_hidden_layers": 32,
                     "router_aux_loss_coef": 0.02},
    "mixtral_8x22b": {**MIXTRAL_COMMON, "hidden_size": 6144, "intermediate_size": 16384,
                      "max_position_embeddings": 65536, "num_attention_heads": 48, "num_hidden_layers": 56,
                      "router_aux_loss_coef": 0.001},
}


@pytest.mark.parametrize("name", PUBLISHED)
def test_named_size_is_the_published_config(name):
    published = config_from_dict(PUBLISHED[name], f"{name} config.json")
    named = builders()[name]().config
    assert named.differences(published) == []
    assert named.max_position_embeddings == published.max_position_embeddings


def test_30b_a3b_counts_30b_parameters_and_3b_active():
    model = builders()["qwen3_moe_30b_a3b"]()
    total = sum(p.numel() for p in model.parameters())
    c = model.config
    per_expert = 3 * c.hidden_size * c.moe_intermediate_size
    active = total - c.num_hidden_layers * (c.num_experts - c.num_experts_per_tok) * per_expert
    # The model card's "30.5B in total, 3.3B activated" (the total exactly as Keras Hub counts the weights).
    assert total == 30_532_122_624 and 3.3e9 <= active < 3.4e9


def test_grouped_matmul_is_each_expert_on_its_rows():
    torch.manual_seed(0)
    x, weight = torch.randn(7, 16), torch.randn(3, 8, 16)
    experts = torch.tensor([0, 0, 2, 2, 2, 2, 2])  # expert 1 gets no row
    out = grouped_mm(x, weight, Groups.of(experts, 3))
    torch.testing.assert_close(out, torch.stack([weight[e] @ row for e, row in zip(experts, x)]))


def tiny_moe(**fields) -> MoE:
    c = DecoderConfig(architecture="MixtralForCausalLM", vocab_size=16, hidden_size=8, intermediate_size=4,
                      num_hidden_layers=1, num_attention_heads=2, num_experts=4, num_experts_per_tok=2, **fields)
    torch.manual_seed(0)
    moe = MoE(c)
    for p in moe.parameters():
        torch.nn.init.normal_(p)
    return moe


@pytest.mark.parametrize("normalize", [True, False])
def test_each_token_is_the_weighted_sum_of_its_top_k_experts(normalize):
    moe = tiny_moe(norm_topk_prob=normalize)
    x = torch.randn(1, 5, 8)
    with torch.no_grad():
        out = moe(x)
    e = moe.experts
    for t, token in enumerate(x[0]):
        probs = torch.softmax(moe.gate.weight @ token, dim=-1)
        top, chosen = probs.topk(2)
        if normalize:
            top = top / top.sum()
        expected = sum(w * (e.down_proj.weight[i] @ (torch.nn.functional.silu(e.gate_proj.weight[i] @ token)
                                                     * (e.up_proj.weight[i] @ token)))
                       for w, i in zip(top, chosen))
        torch.testing.assert_close(out[0, t], expected)


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral"])
def test_router_aux_loss_equals_transformers(family, hf_folder, token_ids):
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    folder = hf_folder(family)
    model = from_pretrained(folder)
    model(token_ids)
    logits = tuple(layer.router_logits for layer in moe_layers(model))
    assert len(logits) == (1 if family == "qwen3_moe" else 2)  # the tiny Qwen3-MoE's layer 1 is dense
    c = model.config
    ours = router_aux_loss(model)
    theirs = load_balancing_loss_func(logits, c.num_experts, c.num_experts_per_tok)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    # The same number transformers' model reports as aux_loss for these tokens.
    hf = make_hf_model(family)
    reported = hf(token_ids, output_router_logits=True).aux_loss
    torch.testing.assert_close(ours, reported, atol=1e-5, rtol=0)
    # With padding left out, as transformers' attention_mask does.
    mask = torch.ones_like(token_ids, dtype=torch.bool)
    mask[0, 8:] = False
    torch.testing.assert_close(router_aux_loss(model, mask),
                               load_balancing_loss_func(logits, c.num_experts, c.num_experts_per_tok, mask),
                               atol=1e-6, rtol=0)


def test_router_aux_loss_reaches_the_routers_and_is_none_for_dense_models(hf_folder, token_ids):
    model = from_pretrained(hf_folder("mixtral")).train()
    model(token_ids)
    router_aux_loss(model).backward()
    for layer in moe_layers(model):
        assert layer.gate.weight.grad.abs().sum() > 0
    dense = from_pretrained(hf_folder("qwen3"))
    dense(token_ids)
    assert router_aux_loss(dense) is None


def test_every_parameter_of_a_moe_model_learns(hf_folder, token_ids):
    model = from_pretrained(hf_folder("qwen3_moe")).train()
    logits = model(token_ids[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), token_ids[:, 1:].flatten())
    (loss + router_aux_loss(model)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.isfinite().all(), name
        if "experts" in name:  # 24 tokens x 2 choices over 4 experts: every expert is chosen
            assert (p.grad.flatten(1).abs().sum(1) > 0).all(), name


def test_missing_expert_is_named(hf_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    source = hf_folder("mixtral")
    tensors = load_file(source / "model.safetensors")
    del tensors["model.layers.1.block_sparse_moe.experts.3.w2.weight"]
    (tmp_path / "config.json").write_text((source / "config.json").read_text())
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.experts\.down_proj\.weight"):
        load_hf_weights(from_hf_config(tmp_path), tmp_path)


def test_a_config_with_router_noise_is_refused(tmp_path):
    config = {**PUBLISHED["mixtral_8x7b"], "router_jitter_noise": 0.1}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="router_jitter_noise"):
        from_hf_config(tmp_path)


def test_activation_checkpointing_keeps_the_aux_loss_and_its_gradients(hf_folder, token_ids):
    from tunelib.training.transforms import activation_checkpointing

    grads = []
    for checkpointed in (False, True):
        model = from_pretrained(hf_folder("mixtral")).train()
        if checkpointed:
            activation_checkpointing(model)
        logits = model(token_ids)
        aux = router_aux_loss(model)
        (logits.square().mean() + aux).backward()
        grads.append((aux.detach(), [p.grad for p in model.parameters()]))
    (plain, plain_grads), (ckpt, ckpt_grads) = grads
    torch.testing.assert_close(ckpt, plain)
    for a, b in zip(ckpt_grads, plain_grads):
        torch.testing.assert_close(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch._grouped_mm runs on CUDA")
def test_grouped_mm_kernel_equals_the_loop_in_bf16():
    torch.manual_seed(0)
    x = torch.randn(64, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(4, 256, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    groups = Groups.of(torch.tensor([0] * 10 + [1] * 30 + [3] * 24, device="cuda"), 4)  # expert 2 gets none
    from tunelib.models.moe import uses_grouped_mm

    assert uses_grouped_mm(x, weight)
    out = grouped_mm(x, weight, groups)
    expected = torch.cat([x[:10] @ weight[0].T, x[10:40] @ weight[1].T, x[40:] @ weight[3].T])
    torch.testing.assert_close(out, expected, atol=0.5, rtol=0.02)  # bf16 rounding of 128-term sums
    out.float().square().sum().backward()
    assert weight.grad[2].abs().sum() == 0 and weight.grad[[0, 1, 3]].abs().sum() > 0


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral"])
def test_cached_decoding_and_packed_documents_equal_plain_runs(family, hf_folder, token_ids):
    # Routing is per token and dropless (no capacity): a token's experts and output do not
    # depend on how many other tokens share the forward.
    model = from_pretrained(hf_folder(family))
    cache = model.new_cache(batch_size=2, max_len=12)
    ids = token_ids[:1]
    docs = torch.tensor([[0] * 5 + [1] * 4 + [2] * 3])
    with torch.no_grad():
        full = model(token_ids)
        steps = [model(token_ids[:, :5], cache=cache)] + [model(token_ids[:, t:t + 1], cache=cache)
                                                          for t in range(5, 12)]
        packed = model(ids, document_ids=docs)
        apart = torch.cat([model(ids[:, :5]), model(ids[:, 5:9]), model(ids[:, 9:])], dim=1)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)
    torch.testing.assert_close(packed, apart, atol=1e-5, rtol=0)
