"""Every family against transformers, both ways, in fp32.

Reference: the transformers implementation of each architecture, built from the same numbers
(tests/support/models.py) with random weights. We expect identical logits (tolerance 1e-5):
the same operations run in the same order, so in practice the difference is 0.
"""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from support.models import FAMILIES, load_hf_model
from tunelib.checkpoint import from_pretrained, save_hf_folder
from tunelib.models import read_hf_config

ATOL = 1e-5


def reference_logits(folder, token_ids):
    with torch.no_grad():
        return load_hf_model(folder)(token_ids).logits


def saved_keys(folder) -> set[str]:
    keys = set()
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            keys |= set(f.keys())
    return keys


@pytest.mark.parametrize("family", FAMILIES)
def test_transformers_checkpoint_gives_transformers_logits(family, hf_folder, token_ids):
    folder = hf_folder(family)
    model = from_pretrained(folder)
    with torch.no_grad():
        logits = model(token_ids)
    assert logits.shape == (2, 12, 128)
    torch.testing.assert_close(logits, reference_logits(folder, token_ids), atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_folder_loads_in_transformers_with_same_logits(family, hf_folder, token_ids, tmp_path):
    source = hf_folder(family)
    model = from_pretrained(source)
    out = save_hf_folder(model.state_dict(), tmp_path / "out", source_dir=source)
    # load_hf_model asserts transformers reports no missing, unexpected or mis-shaped weight.
    torch.testing.assert_close(reference_logits(out, token_ids), reference_logits(source, token_ids),
                               atol=ATOL, rtol=0)
    assert saved_keys(out) == saved_keys(source)  # same keys: no lm_head when tied, fused for Phi


@pytest.mark.parametrize("family", FAMILIES)
def test_generated_config_loads_in_transformers(family, hf_folder, token_ids, tmp_path):
    # Without a source folder, config.json is written from our config (training from scratch).
    source = hf_folder(family)
    model = from_pretrained(source)
    out = save_hf_folder(model.state_dict(), tmp_path / "out", config=model.config)
    torch.testing.assert_close(reference_logits(out, token_ids), reference_logits(source, token_ids),
                               atol=ATOL, rtol=0)
    assert read_hf_config(out) == model.config


def test_from_pretrained_converts_dtype_and_returns_eval_model(hf_folder, token_ids):
    folder = hf_folder("llama3_1")
    model = from_pretrained(folder, dtype="bfloat16")
    assert not model.training
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        logits = model(token_ids)
    assert logits.dtype == torch.bfloat16
    # bf16 keeps ~3 significant digits; the logits are of order 1.
    torch.testing.assert_close(logits.float(), reference_logits(folder, token_ids), atol=0.1, rtol=0)


@pytest.mark.parametrize("family", ["llama3_2", "gemma2", "phi3"])
def test_every_parameter_learns(family, hf_folder, token_ids):
    # One loss reaches every weight (tied embeddings through both uses), with packed documents.
    model = from_pretrained(hf_folder(family)).train()
    docs = torch.tensor([[0] * 6 + [1] * 6] * 2)
    logits = model(token_ids[:, :-1], document_ids=docs[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), token_ids[:, 1:].flatten())
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0 and p.grad.isfinite().all(), name
