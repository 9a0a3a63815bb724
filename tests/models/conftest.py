"""Fixtures of the model tests (the tiny HF folders, `hf_folder`, are in tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def token_ids():
    """Two rows of 12 token ids: longer than every tiny model's sliding window (4 or 6)."""
    return torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
