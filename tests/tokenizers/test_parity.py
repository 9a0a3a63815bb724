"""Our ids are transformers' ids, for every family and every tokenizer file format."""

from __future__ import annotations

import pytest

from support.tokenizers import SAMPLE_TEXTS

import tunelib.tokenizers as T
from tunelib.families import families

transformers = pytest.importorskip("transformers")

# Every tokenizer family the model families name (their built-in chat formats).
FAMILIES = sorted({family.chat_format for family in families().values()})

# (family, file inside the folder) for the non-tokenizer.json formats a folder also carries.
OTHER_FILES = [
    ("llama2", "tokenizer.model"),           # SentencePiece, Meta's Llama 2 file
    ("llama3", "original/tokenizer.model"),  # tiktoken, Meta's Llama 3 file
    ("mistral", "tokenizer.model"),
    ("gemma", "tokenizer.model"),
    ("phi3", "tokenizer.model"),             # SentencePiece + added tokens from tokenizer_config
]


def _hf(info):
    return transformers.AutoTokenizer.from_pretrained(info.folder)


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_json_encode_and_decode_match_transformers(tokenizer_folders, family):
    info = tokenizer_folders(family)
    ours, hf = T.from_pretrained(info.folder), _hf(info)
    assert type(ours.codec).__name__ == "HFCodec"
    for text in SAMPLE_TEXTS:
        ids = hf(text)["input_ids"]
        assert ours.encode(text, add_eos=False) == ids, text
        assert ours.decode(ids) == hf.decode(ids), text
        assert ours.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("family,file", OTHER_FILES)
def test_sentencepiece_and_tiktoken_files_encode_like_transformers(tokenizer_folders, family, file):
    info = tokenizer_folders(family)
    ours, hf = T.from_pretrained(info.folder / file), _hf(info)
    assert type(ours.codec).__name__ in ("SentencePieceCodec", "TiktokenCodec")
    for text in SAMPLE_TEXTS:
        assert ours.encode(text, add_eos=False) == hf(text)["input_ids"], text


@pytest.mark.parametrize("family,file", OTHER_FILES + [(f, "") for f in FAMILIES])
def test_decode_inverts_encode(tokenizer_folders, family, file):
    info = tokenizer_folders(family)
    tok = T.from_pretrained(info.folder / file if file else info.folder)
    for text in SAMPLE_TEXTS:
        if type(tok.codec).__name__ == "HFCodec" and any(s in text for s in tok.special_tokens):
            # A "legacy" Llama tokenizer.json prepends a space to the text after a special
            # token, and transformers decodes it back with that space: not a round trip there.
            continue
        ids = tok.encode(text, add_bos=False, add_eos=False)
        assert tok.decode(ids) == text, (family, file, text)


@pytest.mark.parametrize("family,file", OTHER_FILES + [(f, "") for f in FAMILIES])
def test_special_token_strings_encode_to_their_ids(tokenizer_folders, family, file):
    info = tokenizer_folders(family)
    tok = T.from_pretrained(info.folder / file if file else info.folder)
    for s in (tok.decode([tok.eos_id]), *(tok.decode([i]) for i in tok.stop_tokens)):
        ids = tok.encode(f"a{s}b", add_bos=False, add_eos=False)
        assert tok.special_tokens[s] in ids, (s, ids)
