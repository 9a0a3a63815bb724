"""Trained models out of tunelib: a GGUF file for llama.cpp and Ollama, a repo on the Hugging Face Hub.

    from tunelib.export import export_gguf, upload_folder
    export_gguf("out/final/merged", "model.gguf", outtype="q8_0")    # or an adapter folder
    upload_folder("out/final/merged", "me/my-model")                  # private by default

The CLI verbs are `tune export gguf` and `tune upload` (tunelib/cli/export.py, upload.py).
`gguf` is an optional dependency (pip install 'tunelib[gguf]'), so each name is imported
when first used: uploading needs no gguf.
"""

import importlib

_WHERE = {"export_gguf": "tunelib.export.gguf", "OUTTYPES": "tunelib.export.gguf",
          "upload_folder": "tunelib.export.upload"}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
