"""Preference pairs tokenized once, through `datasets.map`, into two token/label rows on disk.

A pair is a prompt and two answers, chosen and rejected. Each side is the whole conversation
(prompt, then its answer) in the tokenizer's chat format, labelled so only the answer is
trained, and cut to `max_seq_len` by the rule in `fit` (the prompt is kept, the answer cut).
The result is an Arrow file in the datasets cache, memory-mapped, as for SFT data.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tunelib.data.collate import collate_pairs
from tunelib.data.labels import IGNORE_INDEX, shift_labels
from tunelib.data.messages import Message
from tunelib.data.rows import RowError
from tunelib.data.summary import DataSummary
from tunelib.errors import DataError

log = logging.getLogger("tunelib.data")

# A pair's fate. SKIPPED: empty or missing prompt or answer; SAME: chosen equals rejected;
# CUT_AWAY: truncation left an answer with nothing trained, or made the two answers equal.
KEPT, TRUNCATED, SKIPPED, CUT_AWAY, SAME = 0, 1, 2, 3, 4

# Bump when the tokenization below changes, so stale caches are not reused.
_FORMAT_VERSION = "1"

SIDES = ("chosen", "rejected")
COLUMNS = ("chosen_tokens", "chosen_labels", "rejected_tokens", "rejected_labels")


@dataclass(frozen=True)
class Pair:
    """One row as messages: the shared prompt and each side's answer (what follows the prompt)."""

    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]

    def conversation(self, side: str) -> list[Message]:
        """The prompt (never trained) then `side`'s answer (its assistant messages trained)."""
        prompt = [Message(m.role, m.content, masked=True) for m in self.prompt]
        answer = [Message(m.role, m.content, masked=m.role != "assistant") for m in getattr(self, side)]
        return prompt + answer


# convert(row, index) -> a Pair, or a status (SKIPPED, SAME) for a row that has no pair to learn.
ConvertPair = Callable[[dict, int], "Pair | int"]


def fit(ids: list[int], mask: list[bool], limit: int | None, bos_id: int | None) -> tuple[list[int], list[bool], bool]:
    """Cut one side of a pair to `limit` tokens; returns (ids, mask, whether it was cut).

    The prompt is everything before the first trained token (chat headers included). When
    the prompt fits with room to spare, it is kept whole and the answer loses its end. When
    it does not, the prompt loses its oldest tokens (a leading BOS stays) so that the first
    answer token still fits: the answer keeps one token, the prompt its last `limit` - 1
    (or - 2 with the BOS).
    """
    if limit is None or len(ids) <= limit:
        return ids, mask, False
    start = next((i for i, masked in enumerate(mask) if not masked), len(ids))
    if start < limit or start == len(ids):  # (no trained token at all: nothing to keep room for)
        return ids[:limit], mask[:limit], True
    head = 1 if limit >= 3 and ids and ids[0] == bos_id else 0
    tail = limit - head - 1  # prompt tokens kept, from its end
    keep = list(range(head)) + list(range(start - tail, start + 1))
    return [ids[i] for i in keep], [mask[i] for i in keep], True


def _tokenize_side(tokenizer, pair: Pair, side: str) -> tuple[list[int], list[int], bool]:
    ids, mask = tokenizer.tokenize_messages(pair.conversation(side), truncate=False)
    ids, mask, cut = fit(ids, mask, tokenizer.max_seq_len, tokenizer.bos_id)
    return ids, shift_labels(ids, mask), cut


def _empty_row(status: int) -> dict:
    return {**{c: [] for c in COLUMNS}, "status": status, "trained": 0}


def _tokenize_row(tokenizer, pair: Pair | int) -> dict:
    if not isinstance(pair, Pair):
        return _empty_row(pair)
    out, cut, trained = {}, False, 0
    for side in SIDES:
        ids, labels, side_cut = _tokenize_side(tokenizer, pair, side)
        side_trained = sum(1 for label in labels if label != IGNORE_INDEX)
        if side_trained == 0:
            return _empty_row(CUT_AWAY if side_cut else SKIPPED)
        out[f"{side}_tokens"], out[f"{side}_labels"] = ids, labels
        cut, trained = cut or side_cut, trained + side_trained
    if out["chosen_tokens"] == out["rejected_tokens"]:
        return _empty_row(CUT_AWAY if cut else SAME)  # answers that differ only past max_seq_len
    return {**out, "status": TRUNCATED if cut else KEPT, "trained": trained}


def _batch_fn(tokenizer, convert: ConvertPair, rows: Callable[[int], str]):
    def tokenize(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        out = {c: [] for c in (*COLUMNS, "status", "trained")}
        columns = list(batch)
        for values, index in zip(zip(*batch.values()), indices):
            try:
                row = _tokenize_row(tokenizer, convert(dict(zip(columns, values)), index))
            except RowError as e:
                raise DataError(f"{rows(index)}{e.detail}") from None
            except DataError as e:
                raise DataError(f"{rows(index)}: {e}") from None
            for key, value in row.items():
                out[key].append(value)
        return out

    return tokenize


def tokenize_pairs(tokenizer, raw, *, name: str, convert: ConvertPair, settings: dict,
                   num_proc: int | None = None, rows: Callable[[int], str] | None = None) -> PreferenceDataset:
    """Tokenize every row of `raw` (a `datasets.Dataset`) into a pair and return the usable ones.

    `convert(row, index)` turns a row into a Pair, or into SKIPPED / SAME for a row with no
    pair to learn from; it raises DataError naming the row and field when the row is unusable.
    `settings` are the builder's options that change the result (they key the cache).
    `rows(index)` names a row in messages (default: "row INDEX of NAME").
    Raises DataError when no pair is left.
    """
    import datasets

    rows = rows or (lambda index: f"row {index} of {name}")
    key = repr(sorted(settings.items())) + tokenizer.fingerprint + _FORMAT_VERSION
    fingerprint = hashlib.sha256((raw._fingerprint + "pairs" + key).encode()).hexdigest()[:32]
    ids = datasets.Sequence(datasets.Value("int32"))
    features = datasets.Features({**{c: ids for c in COLUMNS}, "status": datasets.Value("int8"),
                                  "trained": datasets.Value("int32")})
    table = raw.map(
        _batch_fn(tokenizer, convert, rows), batched=True, batch_size=256, with_indices=True,
        remove_columns=raw.column_names, features=features, new_fingerprint=fingerprint,
        num_proc=num_proc, desc=f"Tokenizing {name}",
    )
    return PreferenceDataset(table, name=name, pad_id=tokenizer.pad_id, max_seq_len=tokenizer.max_seq_len,
                             rows=rows)


class PreferenceDataset:
    """Map-style dataset of pairs: {"chosen_tokens", "chosen_labels", "rejected_tokens",
    "rejected_labels"} (labels shifted, -100 on the prompt and wherever nothing is learned).

    Only usable pairs are visible; `source_index(i)` gives the raw row an item came from.
    `collate` makes a batch of B pairs into 2B rows (see `tunelib.data.collate_pairs`); the
    loader uses it. `summary` says what building it did; pairs cannot be packed.
    """

    packed = False
    collate = staticmethod(collate_pairs)
    example_prompt: str | None = None  # the first pair's last user message (set by the builder)

    def __init__(self, table, *, name: str, pad_id: int | None, max_seq_len: int | None, weight=None,
                 rows: Callable[[int], str] | None = None):
        import pyarrow.compute as pc

        self.name = name
        self.rows = rows or (lambda index: f"row {index} of {name}")
        self.pad_id = pad_id
        self.max_seq_len = max_seq_len
        self.weight = weight
        self._table = table.select_columns(list(COLUMNS))
        status = table.data.column("status").to_numpy()
        self._rows = np.flatnonzero(status <= TRUNCATED)
        self.side_lengths = {side: pc.list_value_length(table.data.column(f"{side}_tokens"))
                             .to_numpy(zero_copy_only=False)[self._rows].astype(np.int64) for side in SIDES}
        self.lengths = self.side_lengths["chosen"] + self.side_lengths["rejected"]  # tokens per item
        trained = table.data.column("trained").to_numpy()
        self.summary = DataSummary(
            name=name, rows=len(status), kept=len(self._rows),
            skipped=int((status >= SKIPPED).sum()), cut_away=int((status == CUT_AWAY).sum()),
            truncated=int((status == TRUNCATED).sum()), tokens=int(self.lengths.sum()),
            trained=int(trained[self._rows].sum()), max_seq_len=max_seq_len,
        )
        same = np.flatnonzero(status == SAME)
        self.same = len(same)  # pairs skipped because chosen equals rejected
        self._first_same = int(same[0]) if len(same) else None
        if not len(self._rows):
            raise DataError(f"dataset {name}: none of its {len(status):,} rows is a pair to train on (every "
                            "one is empty, has chosen equal to rejected, or is cut away by max_seq_len)")

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        row = self._table[int(self._rows[i])]
        return {c: row[c] for c in COLUMNS}

    def source_index(self, i: int) -> int:
        """The index of item `i`'s row in the raw dataset."""
        return int(self._rows[i])

    def log_summary(self) -> None:
        """Log the summary line, and a second one when pairs had chosen equal to rejected."""
        self.summary.log()
        if self.same:
            log.warning("dataset %s: %s of the skipped rows have the same chosen and rejected answer "
                        "(the first: %s)", self.name, f"{self.same:,}", self.rows(self._first_same))

    def find_token_id(self, limit: int) -> tuple[int, str] | None:
        """The first token id that is >= `limit` or negative, as (id, where), or None."""
        import pyarrow.compute as pc

        for side in SIDES:
            column = self._table.data.column(f"{side}_tokens")
            flat = pc.list_flatten(column)
            if not len(flat) or (pc.max(flat).as_py() < limit and pc.min(flat).as_py() >= 0):
                continue
            position = pc.index(pc.or_(pc.greater_equal(flat, limit), pc.less(flat, 0)), True).as_py()
            lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
            raw_row = int(np.searchsorted(np.cumsum(lengths), position, side="right"))
            return flat[position].as_py(), f"{self.rows(raw_row)} ({side})"
        return None

    def __repr__(self) -> str:
        return f"PreferenceDataset({self.name!r}, pairs={len(self)})"
