"""Messages, and the two common ways datasets store conversations (ShareGPT and OpenAI)."""

from __future__ import annotations

from dataclasses import dataclass

from tunelib.errors import DataError
from tunelib.tokenizers.chat import ROLES

_SHAREGPT_ROLES = {
    "system": "system", "human": "user", "user": "user", "gpt": "assistant",
    "assistant": "assistant", "model": "assistant", "tool": "tool",
}


@dataclass
class Message:
    """One turn of a conversation.

    `masked`: True keeps the message out of the loss, False trains on it, None (default)
    trains assistant messages only.
    """

    role: str
    content: str
    masked: bool | None = None

    @property
    def trained(self) -> bool:
        return (self.role == "assistant") if self.masked is None else not self.masked


def with_masks(messages: list[Message], train_on_input: bool) -> list[Message]:
    """Set `masked` the way the dataset builders train: assistant turns always, user and tool
    turns when `train_on_input`, system prompts never."""
    for m in messages:
        m.masked = m.role == "system" or (m.role != "assistant" and not train_on_input)
    return messages


def add_system_prompt(messages: list[Message], prompt: str | None) -> list[Message]:
    """Replace the conversation's system message with `prompt` (or add one); None keeps it."""
    if prompt is None:
        return messages
    rest = [m for m in messages if m.role != "system"]
    return [Message("system", prompt, masked=True), *rest]


def _text(content, where: str) -> str:
    """Content as text; OpenAI-style lists of {"type": "text", "text": ...} parts are joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise DataError(f"{where} has a {kind!r} content part; only text is supported")
        return "".join(parts)
    raise DataError(f"{where} has content of type {type(content).__name__}; expected text")


def sharegpt_to_messages(conversation, where: str) -> list[Message]:
    """ShareGPT turns [{"from": "human"|"gpt"|"system", "value": ...}] as Messages.

    `where` names the row in error messages ("row 7 of my.jsonl").
    """
    return _convert(conversation, where, "from", "value", _SHAREGPT_ROLES)


def openai_to_messages(conversation, where: str) -> list[Message]:
    """OpenAI turns [{"role": "user"|"assistant"|"system"|"tool", "content": ...}] as Messages."""
    return _convert(conversation, where, "role", "content", {r: r for r in ROLES})


def _convert(conversation, where, role_key, content_key, roles) -> list[Message]:
    if not isinstance(conversation, list) or not conversation:
        raise DataError(f"{where}: the conversation is {_describe(conversation)}; expected a "
                        f"non-empty list of {{{role_key!r}, {content_key!r}}} turns")
    out = []
    for i, turn in enumerate(conversation):
        at = f"{where}, turn {i}"
        if not isinstance(turn, dict):
            raise DataError(f"{at} is {_describe(turn)}; expected {{{role_key!r}, {content_key!r}}}")
        for key in (role_key, content_key):
            if turn.get(key) is None:
                raise DataError(f"{at} has no field {key!r} (it has: {', '.join(turn) or 'nothing'})")
        role = roles.get(str(turn[role_key]).lower())
        if role is None:
            raise DataError(f"{at} has {role_key}={turn[role_key]!r}; use one of {', '.join(roles)}")
        out.append(Message(role, _text(turn[content_key], at)))
    return out


def _describe(value) -> str:
    return "empty" if value is None else f"a {type(value).__name__}"
