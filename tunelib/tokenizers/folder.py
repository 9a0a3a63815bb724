"""Finding a tokenizer file and reading the small JSON files that sit beside it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tunelib.errors import DataError
from tunelib.tokenizers.tiktoken_codec import looks_like_tiktoken

# Files that name a model folder rather than a tokenizer: use the folder's tokenizer.
_FOLDER_MARKERS = {
    "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json",
    "generation_config.json", "config.json", "chat_template.jinja", "added_tokens.json",
}


@dataclass
class TokenizerFiles:
    """Where a tokenizer lives: its file, its kind, and the settings read around it."""

    file: Path
    kind: str  # "hf" (tokenizer.json), "sentencepiece" or "tiktoken"
    tokenizer_config: dict = field(default_factory=dict)
    special_tokens_map: dict = field(default_factory=dict)
    generation_config: dict = field(default_factory=dict)
    model_config: dict = field(default_factory=dict)
    chat_template: str | None = None


def _kind_of(file: Path) -> str:
    if file.suffix == ".json":
        return "hf"
    return "tiktoken" if looks_like_tiktoken(file) else "sentencepiece"


def _find_in_folder(folder: Path) -> Path:
    for candidate in ("tokenizer.json", "tokenizer.model", "original/tokenizer.model"):
        if (folder / candidate).is_file():
            return folder / candidate
    raise DataError(
        f"no tokenizer in {folder}: expected tokenizer.json, tokenizer.model or "
        "original/tokenizer.model; point tokenizer.path at the downloaded model folder"
    )


def _model_folder_above(p: Path) -> Path | None:
    """The model folder a missing tokenizer file was named in (`DIR/original/tokenizer.model`
    from a config of another family), when that folder holds a tokenizer of its own."""
    for parent in list(p.parents)[:2]:
        if parent.is_dir() and any((parent / name).is_file() for name in
                                   ("tokenizer.json", "tokenizer.model", "original/tokenizer.model")):
            return parent
    return None


def locate(path: str | Path) -> TokenizerFiles:
    """Resolve `path` (a model folder or a file inside one) and read the folder's settings.

    Settings come from the tokenizer file's folder and, when that is `original/`, from the
    model folder above it (Meta's layout: `original/tokenizer.model` beside HF files).
    Raises DataError when nothing usable is there.
    """
    p = Path(path).expanduser()
    if not p.exists():
        p = _model_folder_above(p) or p
    if not p.exists():
        raise DataError(
            f"tokenizer path {p} does not exist; set tokenizer.path to the model folder "
            "(the one with tokenizer.json or tokenizer.model)"
        )
    if p.is_dir():
        file = _find_in_folder(p)
    elif p.name in _FOLDER_MARKERS:
        file = _find_in_folder(p.parent)
    else:
        file = p
    folders = [file.parent]
    if file.parent.name == "original":
        folders.append(file.parent.parent)
    files = TokenizerFiles(file=file, kind=_kind_of(file))
    files.tokenizer_config = _read_json(folders, "tokenizer_config.json")
    files.special_tokens_map = _read_json(folders, "special_tokens_map.json")
    files.generation_config = _read_json(folders, "generation_config.json")
    files.model_config = _read_json(folders, "config.json")
    files.chat_template = _chat_template(folders, files.tokenizer_config)
    return files


def _read_json(folders: list[Path], name: str) -> dict:
    for folder in folders:
        f = folder / name
        if f.is_file():
            try:
                data = json.loads(f.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise DataError(f"{f} is not valid JSON (line {e.lineno}: {e.msg}); fix or "
                                "re-download it") from None
            except UnicodeDecodeError as e:
                raise DataError(f"{f} is not UTF-8 text (byte {e.start}); re-download it") from None
            if not isinstance(data, dict):
                raise DataError(f"{f} must hold a JSON object ({{...}}), not a {type(data).__name__}; fix or "
                                "re-download it")
            return data
    return {}


def _chat_template(folders: list[Path], tokenizer_config: dict) -> str | None:
    """The folder's chat template: `chat_template.jinja`, else tokenizer_config's
    `chat_template` (a string, or a list of named templates where "default" is used)."""
    for folder in folders:
        f = folder / "chat_template.jinja"
        if f.is_file():
            return f.read_text(encoding="utf-8")
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return template or None


def token_string(value) -> str | None:
    """A special token as tokenizer_config writes it: a string or {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None
