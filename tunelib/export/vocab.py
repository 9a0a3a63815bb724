"""A model folder's tokenizer as GGUF metadata, the way llama.cpp's converter writes it.

Two kinds, by what the folder holds:

- SentencePiece (`tokenizer.model`, Llama 2, Mistral, Gemma, Phi-3): `tokenizer.ggml.model`
  "llama", every piece with its score and type (normal, unknown, control, unused, byte), and
  the added tokens of tokenizer.json / tokenizer_config.json on top.
- Byte-level BPE (`tokenizer.json`, Llama 3, Qwen): "gpt2", the tokens in their byte-level
  spelling, the merges, and `tokenizer.ggml.pre` naming the pre-tokenizer rules llama.cpp
  applies (llama-bpe for Llama 3, qwen2 for Qwen, else llama.cpp's default).

Both are padded with `[PAD<i>]` up to the model's vocab_size (embedding rows no token uses).
Special token ids, add_bos/add_eos and the chat template come from gguf's `SpecialVocab`,
which reads tokenizer_config.json, tokenizer.json and config.json as transformers does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import gguf

from tunelib.errors import CheckpointError

T = gguf.TokenType


@dataclass
class Vocab:
    """Tokens by id, with their types (gguf.TokenType) and, for SentencePiece, scores."""

    model: str  # "llama" (SentencePiece) or "gpt2" (byte-level BPE)
    tokens: list[str]
    types: list[int]
    scores: list[float] = field(default_factory=list)
    add_space_prefix: bool | None = None  # SentencePiece's dummy prefix ("▁" before the text); Gemma has none


def read_vocab(folder: Path, vocab_size: int) -> Vocab:
    """The tokenizer of `folder`, padded to `vocab_size` tokens.

    Raises:
        CheckpointError: no tokenizer llama.cpp can use (neither a SentencePiece
            tokenizer.model nor a BPE tokenizer.json), or more tokens than embedding rows.
    """
    spm = _sentencepiece(folder / "tokenizer.model")
    if spm is not None:
        vocab = _from_sentencepiece(spm, folder)
    else:
        spec = _tokenizer_json(folder)
        if spec.get("model", {}).get("type") != "BPE" or not _byte_level(spec):
            raise CheckpointError(f"{folder} has no tokenizer GGUF export can write: expected a SentencePiece "
                                  "tokenizer.model or a byte-level BPE tokenizer.json")
        vocab = _from_bpe(spec)
    if len(vocab.tokens) > vocab_size:
        raise CheckpointError(f"the tokenizer in {folder} has {len(vocab.tokens)} tokens but the model only "
                              f"{vocab_size} embedding rows")
    _pad(vocab, vocab_size)
    return vocab


def write_vocab(writer: gguf.GGUFWriter, folder: Path, vocab: Vocab, pre_tokenizer: str) -> None:
    """Write `vocab` and the folder's special tokens and chat template as tokenizer.ggml.* keys."""
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(pre_tokenizer if vocab.model == "gpt2" else "default")
    writer.add_token_list(vocab.tokens)
    if vocab.scores:
        writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    special = gguf.SpecialVocab(folder, load_merges=vocab.model == "gpt2", n_vocab=len(vocab.tokens))
    special.add_to_gguf(writer, quiet=True)


def _sentencepiece(path: Path):
    if not path.is_file():
        return None
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(path.read_bytes())
    except (RuntimeError, OSError):  # Llama 3's tokenizer.model is tiktoken's text format
        return None
    return processor


def _from_sentencepiece(spm, folder: Path) -> Vocab:
    tokens, scores, types = [], [], []
    for i in range(spm.GetPieceSize()):
        tokens.append(spm.IdToPiece(i))
        scores.append(spm.GetScore(i))
        types.append(T.UNKNOWN if spm.IsUnknown(i) else T.CONTROL if spm.IsControl(i) else
                     T.UNUSED if spm.IsUnused(i) else T.BYTE if spm.IsByte(i) else T.NORMAL)
    # Whether the model puts "▁" before the text (llama.cpp assumes so unless told otherwise).
    prefix = spm.EncodeAsPieces("a")[0].startswith("\u2581")
    vocab = Vocab("llama", tokens, types, scores, add_space_prefix=prefix)
    for token_id, content, special in _added_tokens(folder):
        if token_id < len(tokens) and tokens[token_id] == content:
            continue  # a piece of the model itself, listed again
        _put(vocab, token_id, content, T.CONTROL if special else T.USER_DEFINED, score=-1000.0)
    return vocab


def _added_tokens(folder: Path) -> list[tuple[int, str, bool]]:
    """(id, text, special) of tokens added on top of the SentencePiece model."""
    found: dict[int, tuple[str, bool]] = {}
    config = _read_json(folder / "tokenizer_config.json").get("added_tokens_decoder") or {}
    for token_id, entry in config.items():
        found[int(token_id)] = (entry["content"], bool(entry.get("special")))
    for entry in _read_json(folder / "tokenizer.json").get("added_tokens") or []:
        found.setdefault(int(entry["id"]), (entry["content"], bool(entry.get("special"))))
    return [(i, text, special) for i, (text, special) in sorted(found.items())]


def _from_bpe(spec: dict) -> Vocab:
    by_id = {i: token for token, i in spec["model"]["vocab"].items()}
    added = {int(e["id"]): e for e in spec.get("added_tokens") or []}
    size = max([*by_id, *added], default=-1) + 1
    vocab = Vocab("gpt2", [f"[PAD{i}]" for i in range(size)], [T.UNUSED] * size)
    for i, token in by_id.items():
        vocab.tokens[i], vocab.types[i] = token, T.NORMAL
    for i, entry in added.items():
        special = entry.get("special") or _looks_special(entry["content"])
        vocab.tokens[i], vocab.types[i] = entry["content"], T.CONTROL if special else T.USER_DEFINED
    return vocab


def _looks_special(text: str) -> bool:
    # Added tokens spelled like <|im_start|> act as control tokens even when not marked special.
    return text.startswith("<|") and text.endswith("|>")


def _put(vocab: Vocab, token_id: int, text: str, kind: int, score: float) -> None:
    _pad(vocab, token_id + 1)
    vocab.tokens[token_id], vocab.types[token_id] = text, kind
    if vocab.scores:
        vocab.scores[token_id] = score


def _pad(vocab: Vocab, size: int) -> None:
    for i in range(len(vocab.tokens), size):
        vocab.tokens.append(f"[PAD{i}]")
        vocab.types.append(T.UNUSED)
        if vocab.scores:
            vocab.scores.append(-1000.0)


def _byte_level(spec: dict) -> bool:
    """Whether a tokenizer.json's pieces are GPT-2's byte-level spelling (rather than SentencePiece's)."""
    def has(node) -> bool:
        if isinstance(node, dict):
            return node.get("type") == "ByteLevel" or any(has(v) for v in node.values())
        return isinstance(node, list) and any(has(v) for v in node)

    return has(spec.get("pre_tokenizer")) or has(spec.get("decoder"))


def _tokenizer_json(folder: Path) -> dict:
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} has no tokenizer (tokenizer.model or tokenizer.json); copy the base "
                              "model's tokenizer files into it")
    return _read_json(path)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    return data if isinstance(data, dict) else {}
