"""Packing: several documents in one sequence of `max_seq_len` tokens, kept apart.

Packs are planned from the documents' lengths alone (greedily, in dataset order), so planning
a dataset of millions of rows takes a fraction of a second and no tokens are loaded; a pack's
tokens are read when it is used. Each pack carries per-document `position_ids` (restarting at
0) and `document_ids`, with which the model lets a token attend only to earlier tokens of its
own document; labels never cross documents since each document's last label is -100.
"""

from __future__ import annotations

import logging

import numpy as np

from tunelib.errors import DataError

log = logging.getLogger("tunelib.data")


def dataset_lengths(dataset) -> np.ndarray:
    """Token count of every item: the dataset's `lengths` when it has them, else measured."""
    lengths = getattr(dataset, "lengths", None)
    if lengths is not None:
        return np.asarray(lengths, dtype=np.int64)
    return np.array([len(dataset[i]["tokens"]) for i in range(len(dataset))], dtype=np.int64)


def plan_packs(lengths: np.ndarray, max_seq_len: int) -> np.ndarray:
    """Start index of each pack, plus the end: pack k holds items starts[k]..starts[k+1]-1.

    Greedy in order: a pack takes items while their total fits `max_seq_len`; an item longer
    than that gets a pack of its own (and is cut when read).
    """
    ends = np.cumsum(np.minimum(lengths, max_seq_len))
    starts, i, n = [0], 0, len(lengths)
    while i < n:
        budget = (ends[i - 1] if i else 0) + max_seq_len
        j = int(np.searchsorted(ends, budget, side="right"))  # items i..j-1 fit
        i = max(j, i + 1)
        starts.append(i)
    return np.asarray(starts, dtype=np.int64)


class PackedDataset:
    """Packs of a tokenized dataset, each at most `max_seq_len` tokens, read lazily.

    Items are {"tokens", "labels", "position_ids", "document_ids"} lists (not padded: the
    collate function pads every pack to `max_seq_len`).
    """

    packed = True

    def __init__(self, dataset, max_seq_len: int):
        if max_seq_len is None or max_seq_len < 1:
            raise DataError(f"packing needs a positive max_seq_len, got {max_seq_len}")
        self.dataset = dataset
        self.max_seq_len = max_seq_len
        self.name = getattr(dataset, "name", "dataset")
        self.pad_id = getattr(dataset, "pad_id", None)
        self.weight = getattr(dataset, "weight", None)
        self.summary = getattr(dataset, "summary", None)
        self.example_prompt = getattr(dataset, "example_prompt", None)
        lengths = dataset_lengths(dataset)
        self.cut = int((lengths > max_seq_len).sum())
        self._starts = plan_packs(lengths, max_seq_len)
        self.lengths = np.add.reduceat(np.minimum(lengths, max_seq_len), self._starts[:-1]) \
            if len(lengths) else np.zeros(0, dtype=np.int64)
        if self.cut:
            log.warning("packing %s: %d documents longer than %d tokens were cut to fit a pack",
                        self.name, self.cut, max_seq_len)
        log.info("packing %s: %d documents in %d packs of up to %d tokens (%.1f%% filled)",
                 self.name, len(lengths), len(self), max_seq_len,
                 100 * self.lengths.sum() / max(1, len(self) * max_seq_len))

    def __len__(self) -> int:
        return len(self._starts) - 1

    def documents(self, i: int) -> range:
        """Indices (in the underlying dataset) of the documents in pack `i`."""
        return range(int(self._starts[i]), int(self._starts[i + 1]))

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        pack = {"tokens": [], "labels": [], "position_ids": [], "document_ids": []}
        for doc, index in enumerate(self.documents(i)):
            item = self.dataset[index]
            tokens, labels = item["tokens"][: self.max_seq_len], item["labels"][: self.max_seq_len]
            if len(labels):
                labels = list(labels[:-1]) + [-100]  # a cut document must not predict the next one
            pack["tokens"].extend(tokens)
            pack["labels"].extend(labels)
            pack["position_ids"].extend(range(len(tokens)))
            pack["document_ids"].extend([doc] * len(tokens))
        return pack

    def find_token_id(self, limit: int):
        """As TokenizedDataset.find_token_id (packing adds no token)."""
        from tunelib.data.checks import find_token_id

        return find_token_id(self.dataset, limit)

    def __repr__(self) -> str:
        return f"PackedDataset({self.name!r}, packs={len(self)}, max_seq_len={self.max_seq_len})"
