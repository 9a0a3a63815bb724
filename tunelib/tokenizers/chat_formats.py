"""Built-in chat formats, one per model family, written from each family's official template.

They are used when a model folder carries no Jinja `chat_template` (Meta's original
`tokenizer.model` folders, base models) or when `tokenizer.chat_format` names one. Each emits
the text piece by piece and marks as trained the content of trained messages plus the
end-of-turn token after it, so the model learns to stop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tunelib.errors import DataError
from tunelib.tokenizers.chat import PieceRenderer, Rendered, Turn


@dataclass(frozen=True)
class Specials:
    """The special-token strings a format writes (None when the tokenizer has none)."""

    bos: str | None
    eos: str | None


def _split_system(turns: list[Turn]) -> tuple[str | None, list[Turn]]:
    if turns and turns[0].role == "system":
        return turns[0].content, turns[1:]
    return None, turns


def _check_alternation(turns: list[Turn], family: str) -> None:
    for i, t in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if t.role != expected:
            raise DataError(
                f"{family} chat needs user and assistant turns to alternate, starting with user "
                f"(after an optional system message), but turn {i} is {t.role!r}"
            )


def render_plain(turns, sp: Specials, gen: bool) -> Rendered:
    """No chat markers: BOS, the contents back to back, EOS after each assistant turn.

    For base models and instruction data that carries its own prompt (Alpaca)."""
    r = PieceRenderer()
    r.add(sp.bos or "")
    for t in turns:
        r.add(t.content, t.trained)
        if t.role == "assistant":
            r.add(sp.eos or "", t.trained)
    return r.result()


def render_llama2(turns, sp: Specials, gen: bool) -> Rendered:
    """`<s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {answer} </s>`."""
    system, turns = _split_system(turns)
    _check_alternation(turns, "Llama 2")
    r = PieceRenderer()
    for i, t in enumerate(turns):
        if t.role == "user":
            r.add((sp.bos or "") + "[INST] ")
            if i == 0 and system is not None:
                r.add("<<SYS>>\n" + system + "\n<</SYS>>\n\n")
                r.add(t.content.rstrip(), t.trained)
            else:
                r.add(t.content.strip(), t.trained)
            r.add(" [/INST]")
        else:
            r.add(" ")
            r.add(t.content.strip() + " " + (sp.eos or ""), t.trained)
    return r.result()


def render_llama3(turns, sp: Specials, gen: bool) -> Rendered:
    """`<|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>` per message."""
    r = PieceRenderer()
    r.add(sp.bos or "")
    for t in turns:
        role = "ipython" if t.role == "tool" else t.role
        r.add(f"<|start_header_id|>{role}<|end_header_id|>\n\n")
        r.add(t.content.strip() + "<|eot_id|>", t.trained)
    if gen:
        r.add("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return r.result()


def chatml(default_system: str | None, think_block: bool = False):
    """ChatML as Qwen writes it: `<|im_start|>{role}\\n{content}<|im_end|>\\n`.

    `default_system` is added when the conversation has none (Qwen2, Qwen2.5). With
    `think_block` (Qwen3) a final assistant answer after the last user turn is preceded by an
    empty `<think>` block, as Qwen3's template writes it.
    """

    def render(turns, sp: Specials, gen: bool) -> Rendered:
        r = PieceRenderer()
        if default_system is not None and (not turns or turns[0].role != "system"):
            r.add(f"<|im_start|>system\n{default_system}<|im_end|>\n")
        last_user = max((i for i, t in enumerate(turns) if t.role == "user"), default=-1)
        for i, t in enumerate(turns):
            r.add(f"<|im_start|>{t.role}\n")
            content = t.content
            if think_block and t.role == "assistant" and i > last_user and i == len(turns) - 1:
                r.add("<think>\n\n</think>\n\n")
                content = content.lstrip("\n")
            r.add(content + "<|im_end|>", t.trained)
            r.add("\n")
        if gen:
            r.add("<|im_start|>assistant\n")
        return r.result()

    return render


def render_mistral(turns, sp: Specials, gen: bool) -> Rendered:
    """`<s>[INST] {user} [/INST]{answer}</s>`; a system message opens the first user turn."""
    system, turns = _split_system(turns)
    _check_alternation(turns, "Mistral")
    r = PieceRenderer()
    r.add(sp.bos or "")
    for i, t in enumerate(turns):
        if t.role == "user":
            r.add("[INST] ")
            if i == 0 and system is not None:
                r.add(system + "\n\n")
            r.add(t.content, t.trained)
            r.add(" [/INST]")
        else:
            r.add(t.content + (sp.eos or ""), t.trained)
    return r.result()


def render_gemma(turns, sp: Specials, gen: bool) -> Rendered:
    """`<start_of_turn>{user|model}\\n{content}<end_of_turn>\\n`, for Gemma, Gemma 2 and Gemma 3.

    Gemma has no system role: a system message opens the first user turn, followed by a blank
    line, as Gemma 3's template writes it (Gemma 1 and 2's templates refuse one instead)."""
    system, turns = _split_system(turns)
    _check_alternation(turns, "Gemma")
    r = PieceRenderer()
    r.add(sp.bos or "")
    for i, t in enumerate(turns):
        r.add("<start_of_turn>" + ("model" if t.role == "assistant" else t.role) + "\n")
        if i == 0 and system is not None:
            r.add(system + "\n\n")
        r.add(t.content.strip() + "<end_of_turn>", t.trained)
        r.add("\n")
    if gen:
        r.add("<start_of_turn>model\n")
    return r.result()


def render_phi3(turns, sp: Specials, gen: bool) -> Rendered:
    """`<|{role}|>\\n{content}<|end|>\\n`, then EOS (or the assistant header to generate)."""
    r = PieceRenderer()
    for t in turns:
        r.add(f"<|{t.role}|>\n")
        r.add(t.content + "<|end|>", t.trained)
        r.add("\n")
    r.add("<|assistant|>\n" if gen else (sp.eos or ""))
    return r.result()


def render_phi4(turns, sp: Specials, gen: bool) -> Rendered:
    """`<|im_start|>{role}<|im_sep|>{content}<|im_end|>`."""
    r = PieceRenderer()
    for t in turns:
        r.add(f"<|im_start|>{t.role}<|im_sep|>")
        r.add(t.content + "<|im_end|>", t.trained)
    if gen:
        r.add("<|im_start|>assistant<|im_sep|>")
    return r.result()


Renderer = Callable[[list[Turn], Specials, bool], Rendered]

BUILTIN_FORMATS: dict[str, Renderer] = {
    "plain": render_plain,
    "llama2": render_llama2,
    "llama3": render_llama3,
    "chatml": chatml(None),
    "qwen2": chatml("You are a helpful assistant."),
    "qwen2_5": chatml("You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
    "qwen3": chatml(None, think_block=True),
    "mistral": render_mistral,
    "gemma": render_gemma,
    "phi3": render_phi3,
    "phi4": render_phi4,
}


class BuiltinChatFormat:
    """A named built-in format bound to one tokenizer's BOS/EOS strings."""

    def __init__(self, name: str, specials: Specials):
        if name not in BUILTIN_FORMATS:
            raise DataError(
                f"unknown chat_format {name!r}; use 'jinja' or one of {', '.join(BUILTIN_FORMATS)}"
            )
        self.name = name
        self._render = BUILTIN_FORMATS[name]
        self._specials = specials

    def render(self, turns: list[Turn], add_generation_prompt: bool = False) -> Rendered:
        return self._render(turns, self._specials, add_generation_prompt)
