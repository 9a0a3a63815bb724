"""The contract every tokenizer backend (SentencePiece, tiktoken, tokenizer.json) fulfils.

A codec turns text into ids and back. It knows the strings of its special tokens and splits
them out of the text as single ids, as Hugging Face tokenizers do, so a rendered chat template
("<|im_start|>user\\n...") encodes to the same ids everywhere. It adds no BOS or EOS itself:
`tunelib.tokenizers.Tokenizer` decides that.
"""

from __future__ import annotations

import re
from typing import Protocol

Offsets = list[tuple[int, int]]


class Codec(Protocol):
    """Text <-> ids for one tokenizer file."""

    vocab_size: int
    """Number of ids, added and special tokens included (highest id + 1)."""

    special_tokens: dict[str, int]
    """Strings that always encode to one id (control, added and user-defined tokens)."""

    fingerprint: str
    """A short hash of the file(s) the codec was read from."""

    def encode(self, text: str) -> list[int]:
        """Ids for `text`, special-token strings included as single ids."""

    def encode_with_offsets(self, text: str) -> tuple[list[int], Offsets]:
        """Ids and, for each, the (start, end) character span of `text` it came from."""

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        """Text for `ids`; special tokens are written out unless skipped."""

    def token_to_id(self, token: str) -> int | None:
        """The id of a token string, or None when the vocabulary lacks it."""


def special_splitter(specials: dict[str, int]) -> re.Pattern | None:
    """A regex that splits text around special-token strings, longest first (so "<|a|>b" wins
    over "<|a|>"), or None when there are none."""
    if not specials:
        return None
    alternatives = sorted(specials, key=len, reverse=True)
    return re.compile("(" + "|".join(re.escape(s) for s in alternatives) + ")")


def split_on_specials(text: str, splitter: re.Pattern | None) -> list[tuple[int, str, bool]]:
    """Pieces of `text` as (start, piece, is_special), empty pieces dropped."""
    if splitter is None:
        return [(0, text, False)] if text else []
    pieces, pos = [], 0
    for i, piece in enumerate(splitter.split(text)):
        if piece:
            pieces.append((pos, piece, i % 2 == 1))
        pos += len(piece)
    return pieces
