"""Family tokenizer builders for configs (`tokenizer._component_=tunelib.tokenizers.X`).

One builder per name that a family module's `FAMILY["tokenizer"]` gives (see tunelib.families):
`gemma_tokenizer` serves Gemma, Gemma 2 and Gemma 3. Every builder takes exactly
`from_pretrained`'s keywords, so a config can swap `_component_` between them (or to
`from_pretrained`) without leftover keys. The family only picks the built-in chat format used
when the folder has no Jinja chat template.
"""

from __future__ import annotations

from tunelib.families import tokenizer_builders
from tunelib.tokenizers.loading import load
from tunelib.tokenizers.tokenizer import Tokenizer


def _builder(name: str, family: str, titles: list[str]):
    # `family` is the built-in chat format's name (Tokenizer.family).
    def build(path, max_seq_len: int | None = None, *, chat_format: str | None = None,
              truncation_type: str = "right", prompt_template=None, merges_file=None) -> Tokenizer:
        return load(path, max_seq_len, chat_format=chat_format, truncation_type=truncation_type,
                    prompt_template=prompt_template, merges_file=merges_file, family=family)

    build.__name__ = build.__qualname__ = name
    build.__module__ = __name__
    build.__doc__ = (
        f"The tokenizer of {', '.join(titles)}, from a model folder or a tokenizer file inside it.\n\n"
        f"Same arguments as `tunelib.tokenizers.from_pretrained`; without a Jinja chat "
        f"template in the folder, conversations use the built-in {family!r} chat format."
    )
    return build


BUILDERS = {name: _builder(name, family, titles) for name, (family, titles) in tokenizer_builders().items()}
globals().update(BUILDERS)
__all__ = sorted(BUILDERS)
