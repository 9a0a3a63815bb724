"""Loading raw rows with Hugging Face `datasets`: from the Hub or from local files."""

from __future__ import annotations

from tunelib.errors import DataError

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
    try:
        ds = datasets.load_dataset(source, split=split, **load_dataset_kwargs)
    except FileNotFoundError as e:
        raise DataError(f"dataset {name}: {_first_line(e)}; check dataset.source and "
                        "dataset.data_files (a local file needs dataset.source=json|csv|parquet|text)") from None
    except ConnectionError as e:
        raise DataError(f"dataset {name} could not be downloaded ({_first_line(e)}); download it "
                        "while online, or use a local copy: dataset.source=json "
                        "dataset.data_files=<file>") from None
    except datasets.exceptions.DatasetGenerationError as e:
        cause = e.__cause__ or e
        raise DataError(f"dataset {name} could not be read: {_first_line(cause)}; fix the file") from None
    except StopIteration:
        # datasets reads a local file's first block to learn its columns; an empty file has none.
        raise DataError(f"dataset {name} is empty: it has no rows; check dataset.data_files") from None
    except ValueError as e:
        if "corresponds to no data" in str(e):  # a file with a header or `[]` but no rows
            raise DataError(f"dataset {name} is empty: it has no rows; check dataset.data_files") from None
        if "split" in str(e).lower():
            raise DataError(f"dataset {name}: {_first_line(e)}; set dataset.split") from None
        raise
    except TypeError as e:
        raise _unknown_option(e, load_dataset_kwargs) from None
    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise DataError(f"dataset {name} has several splits ({', '.join(ds)}); set dataset.split")
    return ds


# Keys a dataset node commonly takes, for "did you mean" when one is misspelled: extra keys of a
# dataset builder go on to datasets.load_dataset, which only fails there.
_KNOWN_KEYS = ("source", "data_files", "split", "column_map", "train_on_input", "packed", "new_system_prompt",
               "conversation_column", "conversation_style", "column", "add_eos", "filter_fn", "weight",
               "data_dir", "name", "revision", "cache_dir", "num_proc", "field")


def _unknown_option(error: TypeError, kwargs: dict) -> Exception:
    import difflib
    import re

    from tunelib.errors import ConfigError

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
