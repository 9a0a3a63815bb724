"""Loading raw rows with Hugging Face `datasets`: from the Hub or from local files.

A local file that cannot be read is named with its first bad line, the way an editor shows it.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

from tunelib.data.rows import TEXT_FORMATS, local_files, starts_with
from tunelib.errors import ConfigError, DataError
from tunelib.hub import go_offline_unless_reachable

LOCAL_FORMATS = ("json", "csv", "parquet", "text", "arrow")


def describe_source(source: str, data_files=None, split: str = "train") -> str:
    """How error messages and summaries name a dataset: "my.jsonl" or "tatsu-lab/alpaca"."""
    if source in LOCAL_FORMATS and data_files is not None:
        files = data_files if isinstance(data_files, str) else ", ".join(map(str, _flat(data_files)))
        return str(files)
    return source if split == "train" else f"{source} ({split})"


def _flat(data_files):
    if isinstance(data_files, dict):
        return [f for v in data_files.values() for f in ([v] if isinstance(v, str) else v)]
    return list(data_files)


def load_source(source: str, *, split: str = "train", **load_dataset_kwargs):
    """`datasets.load_dataset(source, split=split, **kwargs)` with errors a user can act on.

    `source` is a Hub id ("tatsu-lab/alpaca"), a local folder, or a format name with
    `data_files` ("json", "csv", "parquet", "text"), as torchtune configs write it.
    Returns a map-style `datasets.Dataset` (Arrow on disk, memory-mapped).
    Raises DataError for a missing file or dataset, a bad split, or unreadable rows.
    """
    import datasets

    if load_dataset_kwargs.get("streaming"):
        raise DataError("dataset.streaming=True is not supported: datasets are tokenized once into "
                        "an Arrow cache on disk, so they need not fit in memory; remove streaming")
    if source in LOCAL_FORMATS and load_dataset_kwargs.get("data_files") is None:
        raise DataError(f"dataset.source={source} needs dataset.data_files (e.g. "
                        f"dataset.data_files=train.{'jsonl' if source == 'json' else source})")
    name = describe_source(source, load_dataset_kwargs.get("data_files"), split)
    files = local_files(source, load_dataset_kwargs.get("data_files"), split)
    if source not in LOCAL_FORMATS and not Path(source).expanduser().exists():
        go_offline_unless_reachable()  # a Hub dataset: without network, the cached copy or one line at once
    try:
        with _quiet_file_readers():
            ds = datasets.load_dataset(source, split=split, **load_dataset_kwargs)
    except FileNotFoundError as e:
        raise DataError(f"dataset {name}: {_first_line(e)}; check dataset.source and "
                        "dataset.data_files (a local file needs dataset.source=json|csv|parquet|text)") from None
    except ConnectionError as e:
        raise DataError(f"dataset {name} could not be downloaded ({_first_line(e)}); download it "
                        "while online, or use a local copy: dataset.source=json "
                        "dataset.data_files=<file>") from None
    except datasets.exceptions.DatasetGenerationError as e:
        raise _unreadable(name, files, source, e.__cause__ or e) from None
    except StopIteration:
        # datasets reads a local file's first block to learn its columns; an empty file has none.
        raise DataError(f"dataset {name} is empty: it has no rows; check dataset.data_files") from None
    except ValueError as e:
        if "corresponds to no data" in str(e):  # a file with a header or `[]` but no rows
            raise DataError(f"dataset {name} is empty: it has no rows; check dataset.data_files") from None
        if "split" in str(e).lower():
            raise DataError(f"dataset {name}: {_first_line(e)}; set dataset.split") from None
        if files:  # datasets' JSON reader fails this way too, e.g. on mixed types beside a blank line
            raise _unreadable(name, files, source, e) from None
        raise
    except TypeError as e:
        raise _unknown_option(e, load_dataset_kwargs) from None
    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise DataError(f"dataset {name} has several splits ({', '.join(ds)}); set dataset.split")
    if source in TEXT_FORMATS:
        _check_strings(ds, name, files, source)
    return ds


@contextlib.contextmanager
def _quiet_file_readers():
    # datasets' file readers log a file's parse error themselves, then raise it: the error line
    # says it once. Their loggers take the level of this parent.
    logger = logging.getLogger("datasets.packaged_modules")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_strings(ds, name: str, files: list[Path] | None, source: str) -> None:
    """Refuse text that is not UTF-8: pyarrow's JSON reader keeps such bytes in its strings, and
    the first row read with them fails deep inside tokenization. One pass over the Arrow data."""
    import pyarrow as pa

    try:
        ds.data.table.validate(full=True)
    except pa.ArrowInvalid as e:
        raise _unreadable(name, files, source, e) from None


def _unreadable(name: str, files: list[Path] | None, source: str, cause: BaseException) -> DataError:
    """The first line of `files` that is not UTF-8 (or, for JSON, not an object), else the loader's words."""
    for path in files or []:
        problem = _first_bad_line(path, source)
        if problem:
            return DataError(f"dataset {path} could not be read: {problem}")
    return DataError(f"dataset {name} could not be read: {_first_line(cause)}; fix the file")


def _first_bad_line(path: Path, source: str) -> str | None:
    json_lines = source == "json" and not starts_with(path, b"[")
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as e:
                return (f"line {number} is not UTF-8 text (byte 0x{line[e.start]:02x} at column {e.start + 1}); "
                        "save the file as UTF-8")
            problem = _json_object_problem(text) if json_lines and text.strip() else None
            if problem:
                return f"line {number} {problem}; fix that line (each line of a JSON Lines file is one object)"
    if source == "json" and not json_lines:
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            return f"line {e.lineno}, column {e.colno}: {e.msg}; fix the file there"
    return None


_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true or false",
               type(None): "null"}


def _json_object_problem(text: str) -> str | None:
    try:
        value = json.loads(text.strip())
    except json.JSONDecodeError as e:
        return f"is not valid JSON: {e.msg} (column {e.colno})"
    return None if isinstance(value, dict) else f"is {_JSON_KINDS[type(value)]}, not a JSON object {{...}}"


# Keys a dataset node commonly takes, for "did you mean" when one is misspelled: extra keys of a
# dataset builder go on to datasets.load_dataset, which only fails there.
_KNOWN_KEYS = ("source", "data_files", "split", "column_map", "train_on_input", "packed", "new_system_prompt",
               "conversation_column", "conversation_style", "column", "add_eos", "filter_fn", "weight",
               "data_dir", "name", "revision", "cache_dir", "num_proc", "field")


def _unknown_option(error: TypeError, kwargs: dict) -> Exception:
    import difflib
    import re

    found = re.search(r"unexpected keyword argument '(\w+)'", str(error))
    if not found or found.group(1) not in kwargs:
        return error
    key = found.group(1)
    close = difflib.get_close_matches(key, _KNOWN_KEYS, n=1)
    hint = f" (did you mean 'dataset.{close[0]}'?)" if close else ""
    return ConfigError(f"dataset.{key} is not an option of the dataset builder or of datasets.load_dataset{hint}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
