"""Fixtures for data tests: an offline Hugging Face datasets cache in a temporary folder."""

from __future__ import annotations

import os

import pytest

# Before `datasets` is imported anywhere: never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path_factory, monkeypatch):
    """Every test gets a fresh datasets cache in a temporary folder, offline."""
    import datasets

    cache = tmp_path_factory.mktemp("hf_datasets_cache")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    datasets.disable_progress_bars()
    return cache


@pytest.fixture(scope="session")
def tokenizer_folders(tmp_path_factory):
    """folder_for(family, **writer options) -> TokenizerInfo, cached per session."""
    from support.tokenizers import folder_maker

    return folder_maker(tmp_path_factory.mktemp("data_tokenizers"))


@pytest.fixture
def llama3(tokenizer_folders):
    """A Llama 3.1-style tokenizer (Jinja chat template), 256 tokens at most."""
    import tunelib.tokenizers as T

    return T.from_pretrained(tokenizer_folders("llama3").folder, max_seq_len=256)


@pytest.fixture
def plain(tokenizer_folders):
    """The same tokenizer without chat markers: a sample's text is prompt + response."""
    import tunelib.tokenizers as T

    return T.from_pretrained(tokenizer_folders("llama3").folder, max_seq_len=256, chat_format="plain")
