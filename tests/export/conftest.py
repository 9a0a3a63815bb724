"""Tiny model folders of every family GGUF export supports, and their exported files, made once per session."""

from __future__ import annotations

import contextlib
import io

import pytest


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """tiny(family, **config overrides) -> an HF folder with weights and the family's tokenizer."""
    from support.recipes import tiny_model_folder

    made = {}

    def get(family: str, **overrides):
        key = (family, tuple(sorted(overrides.items())))
        if key not in made:
            # transformers draws a progress bar on stderr, which tests of one-line errors read
            with contextlib.redirect_stderr(io.StringIO()):
                made[key] = tiny_model_folder(tmp_path_factory.mktemp(family), family, **overrides)
        return made[key]

    return get


@pytest.fixture(scope="session")
def exported(tiny, tmp_path_factory):
    """exported(family, outtype) -> the GGUF file of tiny(family)."""
    from tunelib.export import export_gguf

    made = {}

    def get(family: str, outtype: str = "f32"):
        if (family, outtype) not in made:
            out = tmp_path_factory.mktemp("gguf") / f"{family}-{outtype}.gguf"
            export_gguf(tiny(family), out, outtype=outtype)
            made[family, outtype] = out
        return made[family, outtype]

    return get
