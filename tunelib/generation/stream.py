"""Turn tokens into text as they arrive, for printing while the model is still generating.

Decoding token by token goes wrong in two ways: a character split over several byte tokens
decodes as U+FFFD until its last byte arrives, and SentencePiece drops a word's leading space
when the word is decoded alone. So each step decodes a short window that starts a little
before the new tokens and prints only what the window adds (the method of Hugging Face's
text-generation-inference).
"""

from __future__ import annotations

_INCOMPLETE = "\ufffd"


class TextStream:
    """Incremental detokenizer: `push(token)` returns the text that token completes (maybe "")."""

    def __init__(self, tokenizer, *, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.tokens: list[int] = []
        self._prefix = 0  # window start: a few tokens already printed, for context
        self._read = 0  # tokens before this index have been printed
        self.text = ""  # everything returned so far

    def push(self, token: int) -> str:
        """Add a token; return the newly complete text (empty while a character is unfinished)."""
        self.tokens.append(token)
        before = self._decode(self.tokens[self._prefix:self._read])
        after = self._decode(self.tokens[self._prefix:])
        if len(after) <= len(before) or after.endswith(_INCOMPLETE):
            return ""
        new = after[len(before):]
        self._prefix, self._read = self._read, len(self.tokens)
        self.text += new
        return new

    def flush(self) -> str:
        """Whatever is still held back (an unfinished character at the very end)."""
        before = self._decode(self.tokens[self._prefix:self._read])
        new = self._decode(self.tokens[self._prefix:])[len(before):]
        self._prefix = self._read = len(self.tokens)
        self.text += new
        return new

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=self.skip_special_tokens) if tokens else ""
