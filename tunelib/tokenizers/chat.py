"""What every chat format shares: the messages it reads and the rendering it returns.

A chat format turns messages into the exact text a model family expects, and says which
character spans of that text are trained (a trained message's content plus the end-of-turn
token that follows it). The tokenizer encodes the whole text at once, as `transformers`'
`apply_chat_template` does, and marks each token trained when its characters overlap a trained
span. So ids match Hugging Face exactly and the mask follows the text, not token guesses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tunelib.errors import DataError

ROLES = ("system", "user", "assistant", "tool", "ipython")


@dataclass(frozen=True)
class Turn:
    """One message as the chat formats see it."""

    role: str
    content: str
    trained: bool


@dataclass
class Rendered:
    """A conversation as text, with the character spans whose tokens are trained."""

    text: str
    spans: list[tuple[int, int]] = field(default_factory=list)


def as_turns(messages) -> list[Turn]:
    """Read messages given as `tunelib.data.Message` objects or dicts with role/content.

    A dict without "masked" trains assistant messages only. Raises DataError for an unknown
    role or a content that is not text.
    """
    turns = []
    for i, m in enumerate(messages):
        get = m.get if isinstance(m, dict) else lambda k, d=None, m=m: getattr(m, k, d)
        role, content = get("role"), get("content")
        if role not in ROLES:
            raise DataError(f"message {i} has role {role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise DataError(
                f"message {i} ({role}) has content of type {type(content).__name__}; "
                "only text content is supported"
            )
        masked = get("masked", None)
        trained = (role == "assistant") if masked is None else not masked
        turns.append(Turn(role, content, trained))
    return turns


class PieceRenderer:
    """Builds a Rendered from (text, trained) pieces: what the built-in formats emit."""

    def __init__(self):
        self._parts: list[str] = []
        self._spans: list[tuple[int, int]] = []
        self._pos = 0

    def add(self, text: str, trained: bool = False) -> None:
        if not text:
            return
        if trained:
            if self._spans and self._spans[-1][1] == self._pos:
                self._spans[-1] = (self._spans[-1][0], self._pos + len(text))
            else:
                self._spans.append((self._pos, self._pos + len(text)))
        self._parts.append(text)
        self._pos += len(text)

    def result(self) -> Rendered:
        return Rendered("".join(self._parts), self._spans)


def trained_mask(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[bool]:
    """For each token (by character offsets), True when it is NOT trained (torchtune's mask).

    A token is trained when its characters overlap a trained span; a zero-width token counts
    when its position falls inside one. Spans must not overlap each other.
    """
    if not spans or not offsets:
        return [True] * len(offsets)
    spans = np.asarray(sorted(spans), dtype=np.int64)
    tokens = np.asarray(offsets, dtype=np.int64)
    start, end = tokens[:, 0], tokens[:, 1]
    # The only span that can overlap is the last one starting before the token ends.
    k = np.searchsorted(spans[:, 0], np.where(end > start, end - 1, start), side="right") - 1
    trained = (k >= 0) & (spans[np.maximum(k, 0), 1] > start)
    return (~trained).tolist()
