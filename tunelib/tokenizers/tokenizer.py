"""The tokenizer the recipes and datasets use: a codec plus special ids and a chat format."""

from __future__ import annotations

import hashlib

from tunelib.errors import DataError
from tunelib.tokenizers.chat import as_turns, trained_mask
from tunelib.tokenizers.codec import Codec

TRUNCATION_TYPES = ("right", "left")


class Tokenizer:
    """Encodes text and conversations for one model family.

    Build it with `tunelib.tokenizers.from_pretrained` or a family builder
    (`llama3_tokenizer`, ...), not directly.

    Attributes: `bos_id`, `eos_id`, `pad_id` (ids or None), `stop_tokens` (ids that end
    generation), `max_seq_len` (None: no truncation), `vocab_size` (ids incl. special tokens),
    `special_tokens` (string -> id), `chat_format` (the format's name: "jinja", "llama3", ...).
    """

    def __init__(
        self,
        codec: Codec,
        *,
        bos_id: int | None,
        eos_id: int | None,
        pad_id: int | None,
        stop_tokens: list[int],
        chat_format,
        max_seq_len: int | None = None,
        truncation_type: str = "right",
        add_bos: bool = True,
        family: str | None = None,
        source: str = "",
    ):
        if truncation_type not in TRUNCATION_TYPES:
            raise DataError(f"tokenizer.truncation_type={truncation_type!r}; use 'right' or 'left'")
        if max_seq_len is not None and max_seq_len < 1:
            raise DataError(f"tokenizer.max_seq_len={max_seq_len}; use a positive number or null")
        self.codec = codec
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.pad_id = pad_id
        self.stop_tokens = sorted(set(stop_tokens))
        self._chat = chat_format
        self.max_seq_len = max_seq_len
        self.truncation_type = truncation_type
        self.adds_bos = add_bos and bos_id is not None
        self.family = family
        self.source = source

    # -- properties -------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of token ids (highest id + 1), special tokens included."""
        return self.codec.vocab_size

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self.codec.special_tokens)

    @property
    def chat_format(self) -> str:
        return self._chat.name

    @property
    def chat_template(self) -> str:
        """The Jinja source of the chat format, or "" for a built-in format."""
        return getattr(self._chat, "source", "")

    @property
    def fingerprint(self) -> str:
        """A short hash of everything that decides the ids (files, template, settings); dataset
        caches are keyed on it."""
        parts = [self.codec.fingerprint, self.chat_format, getattr(self._chat, "source", ""),
                 str(self.bos_id), str(self.eos_id), str(self.adds_bos), str(self.max_seq_len),
                 self.truncation_type]
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        return (f"Tokenizer(family={self.family!r}, source={self.source!r}, "
                f"vocab_size={self.vocab_size}, chat_format={self.chat_format!r}, "
                f"max_seq_len={self.max_seq_len})")

    # -- text -------------------------------------------------------------------------------

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = True, *,
               truncate: bool = False) -> list[int]:
        """Ids for `text`. Special-token strings in the text become their ids.

        `add_bos` adds `bos_id` when this tokenizer starts sequences with one (Llama, Gemma,
        Mistral do; Qwen does not), `add_eos` adds `eos_id`. With `truncate`, the result is cut
        to `max_seq_len` (from the end or the start, per `truncation_type`).
        """
        ids = self.codec.encode(text)
        if add_bos and self.adds_bos:
            ids = [self.bos_id] + ids
        if add_eos and self.eos_id is not None:
            ids = ids + [self.eos_id]
        return self.truncate(ids)[0] if truncate else ids

    def decode(self, ids, *, skip_special_tokens: bool = False) -> str:
        """Text for `ids` (a list or a 1-D tensor); special tokens are written out unless
        `skip_special_tokens`."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self.codec.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.codec.token_to_id(token)

    # -- conversations ----------------------------------------------------------------------

    def render_messages(self, messages, *, add_generation_prompt: bool = False) -> str:
        """The conversation as text in this tokenizer's chat format."""
        return self._chat.render(as_turns(messages), add_generation_prompt).text

    def tokenize_messages(self, messages, *, add_generation_prompt: bool = False,
                          truncate: bool = True) -> tuple[list[int], list[bool]]:
        """Ids for a conversation in this tokenizer's chat format, and a mask.

        `messages`: `tunelib.data.Message` objects or dicts with role, content and optional
        "masked" (default: only assistant messages are trained). The ids are those of
        `transformers`' `apply_chat_template` on the same messages. `mask[i]` is True when
        token i is NOT trained; a trained message's content and its end-of-turn token are
        trained. With `truncate`, both are cut to `max_seq_len`.
        Raises DataError for a bad role, non-text content, or a conversation the chat
        template rejects.
        """
        rendered = self._chat.render(as_turns(messages), add_generation_prompt)
        ids, offsets = self.codec.encode_with_offsets(rendered.text)
        mask = trained_mask(offsets, rendered.spans)
        if truncate:
            ids, mask = self.truncate(ids, mask)
        return ids, mask

    def truncate(self, ids: list[int], mask: list[bool] | None = None):
        """Cut `ids` (and `mask`) to `max_seq_len`; returns (ids, mask)."""
        n = self.max_seq_len
        if n is None or len(ids) <= n:
            return ids, mask
        cut = slice(None, n) if self.truncation_type == "right" else slice(len(ids) - n, None)
        return ids[cut], (mask[cut] if mask is not None else None)
