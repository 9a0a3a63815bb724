"""Flex attention (attention_backend=flex, and "auto" on CUDA) must equal the dense-mask path.

On CPU flex attention runs torch's reference implementation (the scores materialised, the
mask_mod and score_mod applied as the fused CUDA kernel applies them), so these tests check what
is ours: the block mask (causal, packed documents, sliding windows, a KV cache's offset) and the
soft-cap score_mod. The fused kernel's speed and numerics are checked on a GPU.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.attention.flex_attention as torch_flex

from tunelib.checkpoint import from_pretrained
from tunelib.models import decoder, flex

pytestmark = [
    pytest.mark.skipif(not flex.available(), reason="this torch has no torch.nn.attention.flex_attention"),
    # Eager flex attention warns that it is not the fused kernel: on CPU that is the point.
    pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile"),
]

PACKED = [[0] * 5 + [1] * 4 + [2] * 3, [0] * 2 + [1] * 10]

# llama3: grouped-query heads (4 / 2); qwen3: q/k norms; mistral: a window of 4 in rows of 12;
# gemma2: soft-capped scores with windowed and full layers alternating, and its own scale;
# gemma3: a window on one layer only, each layer type with its own RoPE base.
CASES = [("llama3", PACKED), ("qwen3", PACKED), ("mistral", None), ("mistral", PACKED), ("gemma2", None),
         ("gemma2", PACKED), ("gemma3", PACKED)]


@pytest.fixture
def flex_gradients(monkeypatch):
    """Let gradients through flex attention on CPU.

    torch 2.13 refuses them in flex_attention's argument check (`_validate_device`) only; the
    reference implementation it runs in eager, torch's math backward of the same mask and
    score_mod, works on any device. Where that check is gone or named otherwise, the call is
    left as torch has it (and the test fails if torch still refuses).
    """
    if hasattr(torch_flex, "_validate_device"):
        monkeypatch.setattr(torch_flex, "_validate_device", lambda *args: None)


def _counting(fn, calls: list):
    def wrapped(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)

    return wrapped


def _forward_backward(model, token_ids, docs):
    model.zero_grad()
    out = model(token_ids, document_ids=docs)
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize(("family", "docs"), CASES, ids=[f"{f}-{'packed' if d else 'unpacked'}" for f, d in CASES])
def test_flex_equals_the_dense_mask_forward_and_gradients(family, docs, hf_folder, token_ids, monkeypatch,
                                                          flex_gradients):
    model = from_pretrained(hf_folder(family)).float()
    docs = None if docs is None else torch.tensor(docs)
    calls = []
    monkeypatch.setattr(flex, "attend", _counting(flex.attend, calls))

    model.attention_backend = "flex"
    flex_out, flex_grads = _forward_backward(model, token_ids, docs)
    assert len(calls) == model.config.num_hidden_layers, "flex attention did not run in every layer"

    calls.clear()
    model.attention_backend = "sdpa"
    monkeypatch.setattr(decoder, "document_lengths", lambda ids: None)  # the dense mask, not per document
    dense_out, dense_grads = _forward_backward(model, token_ids, docs)
    assert not calls

    torch.testing.assert_close(flex_out, dense_out, atol=1e-5, rtol=0)
    assert len(flex_grads) == len(dense_grads)
    for a, b in zip(flex_grads, dense_grads):
        # Summed in another order: the bound scales with the gradient (see test_document_attention).
        torch.testing.assert_close(a, b, atol=1e-3 * float(b.abs().max()), rtol=1e-4)


@pytest.mark.parametrize("family", ["mistral", "gemma2"])
def test_flex_with_a_kv_cache_equals_the_dense_path(family, hf_folder, token_ids):
    # Prefill 7 tokens, then one at a time: the block mask's queries are the last of the keys.
    model = from_pretrained(hf_folder(family)).float().eval()

    def generate(backend: str) -> torch.Tensor:
        model.attention_backend = backend
        cache = model.new_cache(token_ids.shape[0], token_ids.shape[1])
        with torch.no_grad():
            steps = [model(token_ids[:, :7], cache=cache)]
            steps += [model(token_ids[:, i:i + 1], cache=cache) for i in range(7, token_ids.shape[1])]
        return torch.cat(steps, dim=1)

    torch.testing.assert_close(generate("flex"), generate("sdpa"), atol=1e-5, rtol=0)


def test_auto_keeps_the_exact_cpu_paths(hf_folder, token_ids, monkeypatch):
    model = from_pretrained(hf_folder("gemma2")).float()
    calls = []
    monkeypatch.setattr(flex, "attend", _counting(flex.attend, calls))
    assert model.attention_backend == "auto"
    with pytest.raises(ValueError, match="attention_backend='flash'; use one of auto, sdpa, flex"):
        model.attention_backend = "flash"
    with torch.no_grad():
        model(token_ids, document_ids=torch.tensor([[0, 0, 1, 1] * 3, [0] * 12]))
    assert not calls


def test_auto_picks_flex_on_cuda_for_what_a_mask_or_soft_cap_would_slow():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert flex.uses_flex("auto", cuda, masked=True, cached=False)
    assert not flex.uses_flex("auto", cuda, masked=False, cached=False)  # plain causal: SDPA's flash kernel
    assert not flex.uses_flex("auto", cuda, masked=True, cached=True)  # generation: a block mask per token
    assert not flex.uses_flex("auto", cpu, masked=True, cached=False)
    assert not flex.uses_flex("sdpa", cuda, masked=True, cached=False)
    assert flex.uses_flex("flex", cpu, masked=False, cached=True)


def test_the_block_mask_is_built_without_reading_the_device(hf_folder, monkeypatch):
    # On a GPU each read of a tensor's value (item, tolist, bool, int) waits for the device.
    model = from_pretrained(hf_folder("gemma2")).float()
    model.attention_backend = "flex"
    docs = torch.tensor([[0] * 100 + [1] * 156, [0] * 256])
    reads = []
    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, _counting(getattr(torch.Tensor, name), reads))
    masks, documents = model.model.attention_masks(256, None, docs, torch.device("cpu"))
    monkeypatch.undo()
    assert not reads and documents is None
    assert all(flex.is_block_mask(m) for m in masks.values()) and len(masks) == 2  # window 4, and full
    # Blocks of 128 (query block, key block): (0, 1) lies above the diagonal and is skipped in both
    # rows. In row 0, document 1 (from 100) sees only part of key block 0; row 1 is one document,
    # so query block 1 sees all of key block 0 (no mask to apply there).
    full = masks[None]
    assert full.kv_num_blocks.tolist() == [[[1, 2]], [[1, 1]]]  # partly visible blocks per query block
    assert full.full_kv_num_blocks.tolist() == [[[0, 0]], [[0, 1]]]  # wholly visible ones


@pytest.mark.parametrize(("device", "refused"), [("cpu", True), ("cuda", False)])
def test_a_flex_backend_that_cannot_train_is_refused(device, refused):
    from tunelib.training.settings import TrainingSettings

    problems = TrainingSettings.value_problems({"attention_backend": "flex", "device": device})
    flex_problems = [p for p in problems if p.startswith("attention_backend=flex")]
    assert bool(flex_problems) == refused, problems
    if refused:
        assert "no backward on CPU" in flex_problems[0] or "cannot train on cpu" in flex_problems[0]
