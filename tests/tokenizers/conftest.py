"""Fixtures for tokenizer tests: tiny tokenizer folders, made once per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tokenizer_folders(tmp_path_factory):
    """folder_for(family, **writer options) -> TokenizerInfo, cached per session."""
    from support.tokenizers import folder_maker

    return folder_maker(tmp_path_factory.mktemp("tokenizers"))
