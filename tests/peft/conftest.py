"""Tiny Hugging Face Llama models and PEFT twins for the adapter tests.

Our transformations work on any module tree with Hugging Face names, so a 2-layer
`LlamaForCausalLM` built from a fixed seed stands in for a tunelib model here.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

VOCAB = 96


def llama_config(hidden: int = 64, tie: bool = False):
    return transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        # Grouped-query attention at hidden 64; at 128 every projection fits NF4's 16384-element blocks.
        num_attention_heads=4, num_key_value_heads=2 if hidden < 128 else 4, max_position_embeddings=64,
        tie_word_embeddings=tie, attention_bias=True,
    )


def build_llama(hidden: int = 64, tie: bool = False, seed: int = 0):
    """A tiny Llama in eval mode with weights drawn from `seed` (q/k/v/o have biases)."""
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(llama_config(hidden, tie)).eval()
    # HF initialises biases to zero; random ones check that DoRA leaves the bias unscaled.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(std=0.1)
    return model


def meta_llama(hidden: int = 64, tie: bool = False):
    """The same Llama built on the meta device, as a tunelib builder returns models."""
    with torch.device("meta"):
        return transformers.LlamaForCausalLM(llama_config(hidden, tie))


def load_base(model, reference, transform=None) -> None:
    """Stream `reference`'s weights into a meta-built `model` as the checkpoint loader does."""
    from tunelib.peft import is_adapter_key

    for name, tensor in reference.state_dict().items():
        if transform is not None:
            tensor = transform(name, tensor)
        owner, _, leaf = name.rpartition(".")
        module = model.get_submodule(owner)
        if getattr(module, leaf).is_meta:
            setattr(module, leaf, torch.nn.Parameter(tensor.clone() if transform is None else tensor,
                                                     requires_grad=False))
    # Non-persistent buffers (rotary inv_freq) are not in a checkpoint; the model computes them.
    model.model.rotary_emb = reference.model.rotary_emb
    if model.config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    assert not [n for n, p in model.named_parameters() if p.is_meta and not is_adapter_key(n)]


def randomize_adapters(model, seed: int = 1) -> None:
    """Give every adapter tensor random values, so that adapters really change the output."""
    from tunelib.peft import adapter_params

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in adapter_params(model).items():
            values = torch.randn(p.shape, generator=gen) * 0.1
            if name.endswith("lora_magnitude_vector"):
                values = values.abs() + 1.0
            p.copy_(values)


def peft_twin(base, our_model, **lora_config):
    """`peft.get_peft_model(base, LoraConfig(...))` holding our model's adapter values."""
    from tunelib.peft import adapter_state_dict

    lora_config = {"r": 8, "lora_alpha": 16, **lora_config}  # apply_peft's defaults, not PEFT's
    config = peft.LoraConfig(task_type="CAUSAL_LM", **lora_config)
    twin = peft.get_peft_model(base, config).eval()
    state = {f"base_model.model.{k}": v for k, v in adapter_state_dict(our_model).items()}
    result = peft.set_peft_model_state_dict(twin, state)
    assert not result.unexpected_keys
    return twin


@pytest.fixture
def tokens():
    return torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(7))


@pytest.fixture
def tiny():
    """Helpers shared by the tests of this folder."""

    class Tiny:
        config = staticmethod(llama_config)
        llama = staticmethod(build_llama)
        meta_llama = staticmethod(meta_llama)
        load_base = staticmethod(load_base)
        randomize = staticmethod(randomize_adapters)
        twin = staticmethod(peft_twin)

    return Tiny
