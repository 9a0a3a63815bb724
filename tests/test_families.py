"""A family module's FAMILY is the one place that names the family; everything else reads it.

tunelib.families reads the literal without importing the module; these tests hold it to the
module's code (sizes, architecture, HF format), to the tokenizer side (builders, chat
formats, detection) and to the tiny models the parity tests run.
"""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import tunelib.families
import tunelib.tokenizers as T
from support.models import FAMILIES as TINY_MODELS
from tunelib.families import families
from tunelib.models import hf_formats
from tunelib.models.registry import family_modules
from tunelib.tokenizers.families import detect_family

FAMILY_NAMES = sorted(families())


@pytest.fixture(scope="module")
def tokenizer_folders(tmp_path_factory):
    """folder_for(tokenizer family) -> a tiny tokenizer folder of that family (support/tokenizers.py)."""
    from support.tokenizers import folder_maker

    return folder_maker(tmp_path_factory.mktemp("tokenizers"))


def test_every_module_with_named_sizes_states_its_family():
    with_sizes = {m.__name__.rsplit(".", 1)[1] for m in family_modules() if hasattr(m, "BUILDERS")}
    assert with_sizes == set(families())


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_the_literal_is_what_the_module_computes_with(name):
    family, module = families()[name], importlib.import_module(f"tunelib.models.{name}")
    assert module.FAMILY == {key: getattr(family, key) for key in module.FAMILY}
    assert {config.architecture for config in module.SIZES.values()} == {family.architecture}
    assert hf_formats()[family.architecture].model_type == family.model_type
    for size, _repo in family.configs.values():
        assert size in module.SIZES
    for builder in module.BUILDERS:
        assert getattr(module, builder).__doc__.startswith(family.title + " ")


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_the_tokenizer_it_names_exists_with_its_chat_format(name, tokenizer_folders):
    family = families()[name]
    builder = getattr(T, family.tokenizer)
    assert family.title in builder.__doc__
    assert family.chat_format in T.BUILTIN_FORMATS
    tokenizer = builder(tokenizer_folders(family.chat_format).folder, chat_format=family.chat_format)
    assert tokenizer.chat_format == family.chat_format


def test_every_family_has_a_tiny_model_for_the_parity_tests():
    assert set(families()) <= set(TINY_MODELS), "add the family to FAMILIES in tests/support/models.py"


def test_one_tokenizer_builder_serves_the_families_that_share_it():
    assert "Gemma, Gemma 2, Gemma 3" in T.gemma_tokenizer.__doc__
    assert T.gemma_tokenizer is T.builders.BUILDERS["gemma_tokenizer"]


def test_config_model_type_picks_the_chat_format_when_the_tokens_do_not():
    assert detect_family({}, {"model_type": "gemma3_text"}) == "gemma"
    assert detect_family({}, {"model_type": "mistral"}) == "mistral"
    # Llama 2 and Llama 3 share "llama": the tokens decide, and a SentencePiece vocabulary means Llama 2.
    assert detect_family({"<s>": 1, "</s>": 2}, {"model_type": "llama"}) == "llama2"
    assert detect_family({"<|start_header_id|>": 5}, {"model_type": "llama"}) == "llama3"
    assert detect_family({}, {"model_type": "falcon"}) is None


def test_a_family_literal_without_the_documented_keys_is_refused(tmp_path, monkeypatch):
    (tmp_path / "newfam.py").write_text('FAMILY = {"title": "New", "architecture": "NewForCausalLM"}\n')
    monkeypatch.setattr(tunelib.families, "MODELS", tmp_path)
    families.cache_clear()
    try:
        with pytest.raises(ValueError, match="newfam.py: FAMILY must be a dict with the keys title, architecture"):
            families()
        (tmp_path / "newfam.py").write_text('NAME = "New"\nFAMILY = {"title": NAME}\n')
        with pytest.raises(ValueError, match="newfam.py: FAMILY must be a literal"):
            families()
    finally:
        families.cache_clear()


def test_families_imports_neither_torch_nor_the_models():
    # A leaf of the layering: the tokenizers, `tune` and the config tools read it freely.
    code = ("import sys, tunelib.families as f; f.families(); "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('tunelib.models')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
