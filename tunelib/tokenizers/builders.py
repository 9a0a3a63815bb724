"""Family tokenizer builders for configs (`tokenizer._component_=tunelib.tokenizers.X`).

Every builder takes exactly `from_pretrained`'s keywords, so a config can swap
`_component_` between them (or to `from_pretrained`) without leftover keys. The family only
picks the built-in chat format used when the folder has no Jinja chat template.
"""

from __future__ import annotations

from tunelib.tokenizers.loading import load
from tunelib.tokenizers.tokenizer import Tokenizer


def _builder(family: str, name: str, model: str):
    def build(path, max_seq_len: int | None = None, *, chat_format: str | None = None,
              truncation_type: str = "right", prompt_template=None, merges_file=None) -> Tokenizer:
        return load(path, max_seq_len, chat_format=chat_format, truncation_type=truncation_type,
                    prompt_template=prompt_template, merges_file=merges_file, family=family)

    build.__name__ = build.__qualname__ = name
    build.__module__ = __name__
    build.__doc__ = (
        f"The {model} tokenizer from a model folder or a tokenizer file inside it.\n\n"
        f"Same arguments as `tunelib.tokenizers.from_pretrained`; without a Jinja chat "
        f"template in the folder, conversations use the built-in {family!r} chat format."
    )
    return build


llama2_tokenizer = _builder("llama2", "llama2_tokenizer", "Llama 2")
llama3_tokenizer = _builder("llama3", "llama3_tokenizer", "Llama 3.x")
qwen2_tokenizer = _builder("qwen2", "qwen2_tokenizer", "Qwen2")
qwen2_5_tokenizer = _builder("qwen2_5", "qwen2_5_tokenizer", "Qwen2.5")
qwen3_tokenizer = _builder("qwen3", "qwen3_tokenizer", "Qwen3")
mistral_tokenizer = _builder("mistral", "mistral_tokenizer", "Mistral")
gemma_tokenizer = _builder("gemma", "gemma_tokenizer", "Gemma")
phi3_mini_tokenizer = _builder("phi3", "phi3_mini_tokenizer", "Phi-3")
phi4_tokenizer = _builder("phi4", "phi4_tokenizer", "Phi-4")

__all__ = [
    "llama2_tokenizer", "llama3_tokenizer", "qwen2_tokenizer", "qwen2_5_tokenizer",
    "qwen3_tokenizer", "mistral_tokenizer", "gemma_tokenizer", "phi3_mini_tokenizer",
    "phi4_tokenizer",
]
