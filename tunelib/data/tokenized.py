"""Tokenizing a raw dataset once, through `datasets.map`, into tokens and labels on disk.

Rows are converted (to messages or text), tokenized, truncated to the tokenizer's
`max_seq_len` and labelled in batches; the result is an Arrow file in the datasets cache,
memory-mapped, so a dataset larger than memory is fine and a second run reuses the cache
(keyed on the raw data, the tokenizer and the builder's settings).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np

from tunelib.data.labels import IGNORE_INDEX, shift_labels
from tunelib.data.rows import RowError
from tunelib.data.summary import DataSummary
from tunelib.errors import DataError

KEPT, TRUNCATED, SKIPPED, CUT_AWAY = 0, 1, 2, 3  # CUT_AWAY: truncation left nothing to train

# Bump when the tokenization below changes, so stale caches are not reused.
_FORMAT_VERSION = "1"

Convert = Callable[[dict, int], "list | str"]
RowNamer = Callable[[int], str]  # raw row index -> how messages name it, e.g. "line 7 of train.jsonl"


def _tokenize_one(tokenizer, sample, add_eos: bool) -> tuple[list[int], list[bool]]:
    if isinstance(sample, str):
        if not sample.strip():
            return [], []
        ids = tokenizer.encode(sample, add_bos=True, add_eos=add_eos)
        return ids, [False] * len(ids)
    if not any(m.role == "assistant" and m.content.strip() for m in sample):
        return [], []  # no answer: even with train_on_input there is nothing worth learning
    return tokenizer.tokenize_messages(sample, truncate=False)


def _batch_fn(tokenizer, convert: Convert, rows: RowNamer, add_eos: bool):
    def tokenize(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        out = {"tokens": [], "labels": [], "status": [], "trained": []}
        columns = list(batch)
        for values, index in zip(zip(*batch.values()), indices):
            row = dict(zip(columns, values))
            try:
                ids, mask = _tokenize_one(tokenizer, convert(row, index), add_eos)
            except RowError as e:
                raise DataError(f"{rows(index)}{e.detail}") from None
            except DataError as e:
                raise DataError(f"{rows(index)}: {e}") from None
            status = KEPT
            if tokenizer.max_seq_len is not None and len(ids) > tokenizer.max_seq_len:
                ids, mask = tokenizer.truncate(ids, mask)
                status = TRUNCATED
            labels = shift_labels(ids, mask)
            trained = sum(1 for label in labels if label != IGNORE_INDEX)
            if trained == 0:
                ids, labels, status = [], [], (CUT_AWAY if status == TRUNCATED else SKIPPED)
            out["tokens"].append(ids)
            out["labels"].append(labels)
            out["status"].append(status)
            out["trained"].append(trained)
        return out

    return tokenize


def tokenize_dataset(tokenizer, raw, *, name: str, convert: Convert, settings: dict,
                     add_eos: bool = False, num_proc: int | None = None,
                     rows: RowNamer | None = None) -> TokenizedDataset:
    """Tokenize every row of `raw` (a `datasets.Dataset`) and return the usable ones.

    `convert(row, index)` turns a row into a list of Messages or a text, raising DataError
    naming the row and field when the row is unusable. `settings` are the builder's options
    that change the result (they key the cache). With `add_eos`, texts end with EOS.
    `rows(index)` names a row in error messages (default: "row INDEX of NAME").
    A row with nothing to train on is dropped and counted; a long row is truncated and counted.
    Raises DataError when no row is left.
    """
    import datasets

    rows = rows or _by_index(name)
    key = repr(sorted(settings.items())) + tokenizer.fingerprint + _FORMAT_VERSION + str(add_eos)
    fingerprint = hashlib.sha256((raw._fingerprint + key).encode()).hexdigest()[:32]
    features = datasets.Features({
        "tokens": datasets.Sequence(datasets.Value("int32")),
        "labels": datasets.Sequence(datasets.Value("int32")),
        "status": datasets.Value("int8"),
        "trained": datasets.Value("int32"),
    })
    table = raw.map(
        _batch_fn(tokenizer, convert, rows, add_eos), batched=True, batch_size=256, with_indices=True,
        remove_columns=raw.column_names, features=features, new_fingerprint=fingerprint,
        num_proc=num_proc, desc=f"Tokenizing {name}",
    )
    return TokenizedDataset(table, name=name, pad_id=tokenizer.pad_id, max_seq_len=tokenizer.max_seq_len, rows=rows)


def _by_index(name: str) -> RowNamer:
    return lambda index: f"row {index} of {name}"


class TokenizedDataset:
    """Map-style dataset of {"tokens": list[int], "labels": list[int]} (labels already shifted,
    -100 where nothing is learned). Only usable rows are visible; `source_index(i)` gives the
    raw row an item came from. `summary` says what building it did.
    """

    packed = False
    example_prompt: str | None = None  # the first row's user message (set by the builders)

    def __init__(self, table, *, name: str, pad_id: int | None, max_seq_len: int | None, weight=None,
                 rows: RowNamer | None = None):
        import pyarrow.compute as pc

        self.name = name
        self.rows = rows or _by_index(name)
        self.pad_id = pad_id
        self.max_seq_len = max_seq_len
        self.weight = weight
        self._table = table.select_columns(["tokens", "labels"])
        status = table.data.column("status").to_numpy()
        self._rows = np.flatnonzero(status <= TRUNCATED)
        all_lengths = pc.list_value_length(table.data.column("tokens")).to_numpy(zero_copy_only=False)
        self.lengths = all_lengths[self._rows].astype(np.int64)
        trained = table.data.column("trained").to_numpy()
        self.summary = DataSummary(
            name=name, rows=len(status), kept=len(self._rows),
            skipped=int((status >= SKIPPED).sum()), cut_away=int((status == CUT_AWAY).sum()),
            truncated=int((status == TRUNCATED).sum()),
            tokens=int(self.lengths.sum()), trained=int(trained[self._rows].sum()),
            max_seq_len=max_seq_len,
        )
        if not len(self._rows):
            raise DataError(f"dataset {name}: none of its {len(status):,} rows has anything to train "
                            "on (every response is empty, or cut away by max_seq_len)")

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        row = self._table[int(self._rows[i])]
        return {"tokens": row["tokens"], "labels": row["labels"]}

    def source_index(self, i: int) -> int:
        """The index of item `i`'s row in the raw dataset."""
        return int(self._rows[i])

    def find_token_id(self, limit: int) -> tuple[int, str] | None:
        """The first token id that is >= `limit` or negative, as (id, where: "line 7 of train.jsonl"), or None.

        Runs over the memory-mapped Arrow column, so it is cheap even for a large dataset.
        """
        import pyarrow.compute as pc

        column = self._table.data.column("tokens")
        flat = pc.list_flatten(column)
        if not len(flat):
            return None
        if pc.max(flat).as_py() < limit and pc.min(flat).as_py() >= 0:
            return None
        bad = pc.or_(pc.greater_equal(flat, limit), pc.less(flat, 0))
        position = pc.index(bad, True).as_py()
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        raw_row = int(np.searchsorted(np.cumsum(lengths), position, side="right"))
        return flat[position].as_py(), self.rows(raw_row)

    def __repr__(self) -> str:
        return f"TokenizedDataset({self.name!r}, rows={len(self)})"
