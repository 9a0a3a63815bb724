"""Tiny HF model folders shared by the model tests (built once per session, one per family)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def hf_folder(tmp_path_factory):
    """hf_folder(family) -> a saved tiny transformers model of that family (read-only: do not write into it)."""
    from support.models import make_hf_model_folder

    made = {}

    def get(family: str):
        if family not in made:
            made[family] = make_hf_model_folder(tmp_path_factory.mktemp(family), family)
        return made[family]

    return get


@pytest.fixture
def token_ids():
    """Two rows of 12 token ids: longer than every tiny model's sliding window (4 or 6)."""
    return torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
