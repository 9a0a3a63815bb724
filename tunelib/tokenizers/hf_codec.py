"""Hugging Face `tokenizer.json` files, read with the `tokenizers` library (Qwen, Mistral,
Gemma, Phi, Llama HF folders, and any folder that only has a tokenizer.json)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tunelib.errors import DataError
from tunelib.tokenizers.codec import Offsets


class HFCodec:
    """Encodes with a `tokenizers.Tokenizer`; its post-processor (which may add BOS) is not
    used, since `Tokenizer.encode` adds BOS and EOS itself."""

    def __init__(self, path: str | Path):
        import tokenizers

        path = Path(path)
        data = path.read_bytes()
        try:
            self.tok = tokenizers.Tokenizer.from_str(data.decode("utf-8"))
        except Exception as e:  # the library reports a parse error as a plain Exception
            raise DataError(f"{path} is not a readable tokenizer.json ({e}); re-download it") from None
        self.tok.no_truncation()
        self.tok.no_padding()
        self.fingerprint = hashlib.sha256(data).hexdigest()[:16]
        added = self.tok.get_added_tokens_decoder()
        self.special_tokens = {t.content: i for i, t in added.items()}
        self._flagged_special = {i for i, t in added.items() if t.special}
        self.vocab_size = max([self.tok.get_vocab_size(with_added_tokens=True) - 1, *added]) + 1
        self.post_processor_bos = _post_processor_bos(json.loads(data))

    def token_to_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], Offsets]:
        enc = self.tok.encode(text, add_special_tokens=False)
        return enc.ids, list(enc.offsets)

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)


def _post_processor_bos(spec: dict) -> str | None:
    """The special token a TemplateProcessing post-processor puts first, if any (Llama, Gemma
    files add BOS this way; Qwen's add nothing)."""
    post = spec.get("post_processor") or {}
    steps = post.get("processors", [post]) if post.get("type") == "Sequence" else [post]
    for step in steps:
        if step.get("type") == "TemplateProcessing" and step.get("single"):
            first = step["single"][0]
            if "SpecialToken" in first:
                return first["SpecialToken"]["id"]
    return None
