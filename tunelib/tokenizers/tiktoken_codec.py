"""tiktoken-format BPE files: Llama 3.x `original/tokenizer.model`.

The file holds one `base64(token bytes) rank` pair a line. Special tokens are not in the file;
Llama 3 numbers its 256 of them from the size of the base vocabulary (128000 in the real file),
so a tiny test file of 512 ranks gets them at 512..767.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from tunelib.errors import DataError
from tunelib.tokenizers.codec import Offsets

# Meta's pre-tokenizer pattern for Llama 3 (splits letters, up to 3 digits, punctuation, spaces).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_LLAMA3_NAMED = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
]
LLAMA3_NUM_SPECIAL = 256


def llama3_special_tokens(base_vocab_size: int) -> dict[str, int]:
    """Llama 3's 256 special tokens, numbered from `base_vocab_size` as in Meta's tokenizer.

    The first 11 have names; the rest are `<|reserved_special_token_3|>` onwards, matching the
    Hugging Face Llama 3.1 files (128011 is reserved_special_token_3, 128255 is _247).
    """
    names = list(_LLAMA3_NAMED)
    names += [f"<|reserved_special_token_{3 + i}|>" for i in range(LLAMA3_NUM_SPECIAL - len(names))]
    return {name: base_vocab_size + i for i, name in enumerate(names)}


def read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """Parse a tiktoken BPE file; raise DataError naming the line when it is not one."""
    ranks = {}
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError:
            raise DataError(
                f"{path}: line {number} is not 'base64-token rank'; this is not a tiktoken "
                "tokenizer file (point tokenizer.path at the model folder or its tokenizer.json)"
            ) from None
    return ranks


def looks_like_tiktoken(path: Path) -> bool:
    """True when the file starts like a tiktoken BPE file (a SentencePiece model is binary)."""
    with open(path, "rb") as f:
        head = f.read(256).split(b"\n", 1)[0]
    parts = head.split()
    if len(parts) != 2 or not parts[1].isdigit():
        return False
    try:
        base64.b64decode(parts[0], validate=True)
    except ValueError:
        return False
    return True


class TiktokenCodec:
    """Encodes with tiktoken's BPE; special-token strings in the text become their ids.

    The special tokens are Llama 3's, numbered from the base vocabulary size, plus
    `added_tokens` (string -> id) from the folder's tokenizer_config.json, which win.
    """

    def __init__(self, path: str | Path, *, pattern: str = LLAMA3_PATTERN,
                 added_tokens: dict[str, int] | None = None):
        import tiktoken

        path = Path(path)
        ranks = read_tiktoken_ranks(path)
        self.special_tokens = llama3_special_tokens(len(ranks))
        self.special_tokens.update(added_tokens or {})
        self.fingerprint = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        self.enc = tiktoken.Encoding(
            name=f"tunelib-{self.fingerprint}",
            pat_str=pattern,
            mergeable_ranks=ranks,
            special_tokens=self.special_tokens,
        )
        self.vocab_size = max([len(ranks) - 1, *self.special_tokens.values()]) + 1
        self._special_ids = set(self.special_tokens.values())

    def token_to_id(self, token: str) -> int | None:
        if token in self.special_tokens:
            return self.special_tokens[token]
        try:
            return self.enc.encode_single_token(token.encode("utf-8"))
        except KeyError:
            return None

    def encode(self, text: str) -> list[int]:
        return self.enc.encode(text, allowed_special="all", disallowed_special=())

    def encode_with_offsets(self, text: str) -> tuple[list[int], Offsets]:
        ids = self.encode(text)
        _, starts = self.enc.decode_with_offsets(ids)
        ends = starts[1:] + [len(text)]
        # A token that ends inside a multi-byte character shares that character with the next.
        offsets = [(s, max(e, s + 1) if s < len(text) else s) for s, e in zip(starts, ends)]
        return ids, offsets

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special_ids]
        return self.enc.decode(ids, errors="replace")
