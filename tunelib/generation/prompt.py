"""What the model is asked: a prompt, a system message and earlier messages, as token ids."""

from __future__ import annotations

from tunelib.errors import ConfigError

TORCHTUNE_PROMPT_KEYS = ("system", "user")


def conversation(prompt: str | None, system: str | None = None, messages: list | None = None) -> list[dict]:
    """The messages to answer: an optional system message, the earlier `messages`, then `prompt` as
    the user's new message (optional when `messages` already ends with it).

    Raises:
        ConfigError: nothing to answer, or a system message given twice.
    """
    turns = [dict(m) for m in messages or []]
    if system is not None:
        if turns and turns[0].get("role") == "system":
            raise ConfigError("system is set and messages starts with a system message; keep one of them")
        turns.insert(0, {"role": "system", "content": system})
    if prompt is not None:
        turns.append({"role": "user", "content": prompt})
    if not any(t.get("role") != "system" for t in turns):
        raise ConfigError('nothing to answer: set prompt="..." (or messages=[{role: user, content: ...}])')
    return turns


def from_torchtune(prompt, system: str | None) -> tuple[str | None, str | None]:
    """Read torchtune's `prompt: {system: ..., user: ...}` as (prompt, system); a string passes through.

    Raises:
        ConfigError: other keys, or a value that is not text.
    """
    if not hasattr(prompt, "keys"):
        return prompt, system
    unknown = [k for k in prompt.keys() if k not in TORCHTUNE_PROMPT_KEYS]
    if unknown:
        raise ConfigError(f"prompt.{unknown[0]}: a prompt mapping takes only system and user (torchtune's form); "
                          'or write prompt="..." and system="..."')
    for key in TORCHTUNE_PROMPT_KEYS:
        value = prompt.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"prompt.{key} was read as {value!r}, not text; write prompt=\"...\" and "
                              "system=\"...\" instead, whose text is kept as typed")
    if prompt.get("system") is not None and system is not None:
        raise ConfigError("both prompt.system and system are set; keep one")
    return prompt.get("user"), prompt.get("system") if prompt.get("system") is not None else system


def build_request(prompt: str | None, system: str | None = None, messages: list | None = None, *,
                  chat: bool = True) -> list[dict] | str:
    """What to generate after: the conversation (with `chat`) or the plain text to continue.

    Checked before any model is loaded, so a bad request costs nothing.

    Raises:
        ConfigError: nothing to answer, or system/messages without chat.
    """
    if chat:
        return conversation(prompt, system, messages)
    if system is not None or messages:
        raise ConfigError("chat=false continues plain text; system and messages need chat=true")
    if prompt is None:
        raise ConfigError('nothing to continue: set prompt="..."')
    return prompt


def encode_request(tokenizer, request: list[dict] | str) -> list[int]:
    """Token ids of a request: a conversation in the tokenizer's chat format followed by the start
    of the assistant's turn, or plain text (BOS first when the tokenizer uses one).

    Raises:
        DataError: a message the chat format cannot take (its role, its content).
    """
    if isinstance(request, str):
        return tokenizer.encode(request, add_bos=True, add_eos=False)
    ids, _ = tokenizer.tokenize_messages(request, add_generation_prompt=True, truncate=False)
    return ids
