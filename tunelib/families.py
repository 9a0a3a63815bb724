"""The model families tunelib knows, as each family module states them in its `FAMILY` literal.

A family module (`tunelib/models/<family>.py`) is the one place that names its family:

    FAMILY = {
        "title": "Gemma 3",                      # as model cards write it
        "architecture": "Gemma3ForCausalLM",     # the HF class its checkpoints name
        "model_type": "gemma3_text",             # config.json's model_type
        "tokenizer": "gemma_tokenizer",          # the builder under tunelib.tokenizers
        "chat_format": "gemma",                  # built-in format without a Jinja template
        "tokenizer_file": "tokenizer.model",     # in configs, relative to the model folder ("" = folder)
        "configs": {"1B": ("1b", "google/gemma-3-1b-it")},  # shipped configs: label -> (size, Hub repo)
    }

and, optionally, `"methods": ("full", "lora", ...)`: the only methods its configs are made for
(scripts/make_configs.py's names; default: all of them), for a family some methods cannot train.

This module reads those literals from the source files without importing them (as
`tunelib.registry` reads recipes' literals), so the tokenizers, the config tools and `tune`
can use them without torch and without importing the models, which the layering forbids
them (tests/test_layering.py). It imports nothing of tunelib's: anyone may use it.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

MODELS = Path(__file__).resolve().parent / "models"
_KEYS = ("title", "architecture", "model_type", "tokenizer", "chat_format", "tokenizer_file", "configs")
_OPTIONAL = ("methods",)


@dataclass(frozen=True)
class Family:
    """One family module's `FAMILY`; `name` is the module's name (`tunelib.models.<name>`)."""

    name: str
    title: str
    architecture: str
    model_type: str
    tokenizer: str
    chat_format: str
    tokenizer_file: str
    configs: dict[str, tuple[str, str]]
    methods: tuple[str, ...] | None = None  # the methods its configs are made for; None: all

    def builder(self, size: str) -> str:
        """The dotted path of the named builder of `size`, e.g. tunelib.models.gemma3.gemma3_1b."""
        return f"tunelib.models.{self.name}.{self.name}_{size}"


@functools.cache
def families() -> dict[str, Family]:
    """Every family module's FAMILY, by module name, in file-name order.

    Raises:
        ValueError: a FAMILY that is not a literal dict with exactly the documented keys
            (a mistake in tunelib's own source; the message names the file).
    """
    found = {}
    for path in sorted(MODELS.glob("*.py")):
        spec = _literal(path)
        if spec is not None:
            found[path.stem] = Family(name=path.stem, **spec)
    return found


def _literal(path: Path) -> dict | None:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "FAMILY" for t in node.targets):
            try:
                spec = ast.literal_eval(node.value)
            except ValueError:
                raise ValueError(f"{path}: FAMILY must be a literal (plain strings, dicts and tuples)") from None
            if not isinstance(spec, dict) or not set(_KEYS) <= set(spec) <= set(_KEYS + _OPTIONAL):
                raise ValueError(f"{path}: FAMILY must be a dict with the keys {', '.join(_KEYS)} "
                                 f"(and optionally {', '.join(_OPTIONAL)})")
            return spec
    return None


def tokenizer_builders() -> dict[str, tuple[str, list[str]]]:
    """Tokenizer builder name -> (its chat format, the titles of the families that use it).

    Raises:
        ValueError: two families name one builder with different chat formats.
    """
    out: dict[str, tuple[str, list[str]]] = {}
    for family in families().values():
        chat_format, titles = out.setdefault(family.tokenizer, (family.chat_format, []))
        if chat_format != family.chat_format:
            raise ValueError(f"{family.tokenizer} is named with chat formats {chat_format!r} and "
                             f"{family.chat_format!r} (family {family.name}); one builder has one format")
        titles.append(family.title)
    return out


def chat_format_of(model_type: str) -> str | None:
    """The chat format of the families whose config.json says `model_type`; None when there is
    none, or when they differ (Llama 2 and 3 are both "llama": their tokens tell them apart)."""
    formats = {f.chat_format for f in families().values() if f.model_type == model_type}
    return formats.pop() if len(formats) == 1 else None
