"""A model folder's own Jinja `chat_template`, rendered as `transformers` renders it.

Templates are untrusted text from the Hub, so they run in jinja2's immutable sandbox with the
same settings and helpers `transformers` gives them (trim_blocks, lstrip_blocks, loop
controls, `raise_exception`, `strftime_now`, a `tojson` that keeps non-ASCII).

To know which characters belong to which message, the template is rendered a second time
with each trained message's content wrapped in private-use sentinel characters. Removing
them must give back the exact text; their positions are then the content spans. A template
that trims content is handled by wrapping the trimmed content instead. The end-of-turn token
that follows a trained message's content (after optional whitespace) is trained too.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from functools import lru_cache

from tunelib.errors import DataError
from tunelib.tokenizers.chat import Rendered, Turn

_OPEN, _MID_OPEN, _CLOSE, _MID_CLOSE = "\ue000", "\ue001", "\ue002", "\ue003"
_SENTINEL = re.compile(f"{_OPEN}(\\d+){_MID_OPEN}|{_CLOSE}(\\d+){_MID_CLOSE}")


def _generation_tag_extension():
    """`{% generation %}...{% endgeneration %}` (used by some templates to mark assistant
    text for transformers) renders its body unchanged here."""
    from jinja2 import nodes
    from jinja2.ext import Extension

    class GenerationTag(Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    return GenerationTag


@lru_cache(maxsize=32)
def compile_template(source: str):
    """Compile a chat template in the sandbox; raise DataError when it does not parse."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True,
        extensions=[_generation_tag_extension(), loopcontrols],
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise DataError(f"the tokenizer's chat_template does not parse (line {e.lineno}: {e.message}); "
                        "fix it or set tokenizer.chat_format to a built-in format") from None


def _strip_sentinels(text: str) -> tuple[str, dict[int, list[int]], dict[int, list[int]]]:
    """Text without sentinels, and where each message's opening/closing sentinels stood."""
    opens: dict[int, list[int]] = {}
    closes: dict[int, list[int]] = {}
    out, last, removed = [], 0, 0
    for m in _SENTINEL.finditer(text):
        out.append(text[last : m.start()])
        pos = m.start() - removed
        if m.group(1) is not None:
            opens.setdefault(int(m.group(1)), []).append(pos)
        else:
            closes.setdefault(int(m.group(2)), []).append(pos)
        removed += m.end() - m.start()
        last = m.end()
    out.append(text[last:])
    return "".join(out), opens, closes


class JinjaChatFormat:
    """Renders with a Jinja chat template and finds the trained spans in its output."""

    name = "jinja"

    def __init__(self, source: str, special_strings: dict[str, str | None], end_markers: list[str]):
        self.source = source
        self._template = compile_template(source)
        self._specials = dict(special_strings)
        self._end_markers = sorted({m for m in end_markers if m}, key=len, reverse=True)

    def __getstate__(self):
        # Compiled templates do not pickle; datasets' worker processes recompile them.
        return {k: v for k, v in self.__dict__.items() if k != "_template"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._template = compile_template(self.source)

    def _render(self, messages: list[dict], gen: bool) -> str:
        import jinja2

        try:
            return self._template.render(
                messages=messages, add_generation_prompt=gen, tools=None, documents=None,
                **self._specials,
            )
        except jinja2.TemplateError as e:
            raise DataError(f"the chat template rejected this conversation: {e}") from None

    def render(self, turns: list[Turn], add_generation_prompt: bool = False) -> Rendered:
        messages = [{"role": t.role, "content": t.content} for t in turns]
        text = self._render(messages, add_generation_prompt)
        trained = [i for i, t in enumerate(turns) if t.trained]
        if not trained:
            return Rendered(text, [])
        spans = self._locate(messages, trained, text, add_generation_prompt)
        return Rendered(text, [(s, self._extend_to_end_marker(text, e)) for s, e in spans])

    def _locate(self, messages, trained, text, gen) -> list[tuple[int, int]]:
        # Fast path: every trained message wrapped at once, raw then trimmed.
        for trim in (False, True):
            spans = self._try_wrapped(messages, trained, text, gen, trim)
            if spans is not None:
                return spans
        # Some templates trim some roles and not others: try each message on its own.
        spans = []
        for i in trained:
            found = None
            for trim in (False, True):
                found = self._try_wrapped(messages, [i], text, gen, trim)
                if found is not None:
                    break
            if found is None:
                raise DataError(
                    f"cannot tell which tokens of message {i} ({messages[i]['role']}) the chat "
                    "template produced (it rewrites the content); set tokenizer.chat_format to "
                    "a built-in format to train on this data"
                )
            spans.extend(found)
        return spans

    def _try_wrapped(self, messages, indices, text, gen, trim) -> list[tuple[int, int]] | None:
        marked = [dict(m) for m in messages]
        for i in indices:
            content = marked[i]["content"].strip() if trim else marked[i]["content"]
            marked[i]["content"] = f"{_OPEN}{i}{_MID_OPEN}{content}{_CLOSE}{i}{_MID_CLOSE}"
        clean, opens, closes = _strip_sentinels(self._render(marked, gen))
        if clean != text:
            return None
        spans = []
        for i in indices:
            starts, ends = opens.get(i, []), closes.get(i, [])
            if not starts or len(starts) != len(ends):
                return None
            spans.extend(zip(starts, ends))
        return spans

    def _extend_to_end_marker(self, text: str, end: int) -> int:
        """Move a content end past following whitespace and an end-of-turn token, if any."""
        pos = end
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        for marker in self._end_markers:
            if text.startswith(marker, pos):
                return pos + len(marker)
        return end
