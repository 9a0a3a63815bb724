"""A config's list of datasets: concatenated, or sampled by weight."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from support.data import many_rows, write_rows

import tunelib.data as D
from tunelib.errors import DataError


class Tagged:
    """n samples whose tokens are [tag, i]."""

    def __init__(self, tag, n, weight=None):
        self.tag, self.n, self.weight = tag, n, weight
        self.lengths = np.full(n, 2)
        self.name = f"d{tag}"

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return {"tokens": [self.tag, i], "labels": [i, -100]}


def test_without_weights_datasets_are_concatenated():
    both = D.combine([Tagged(1, 3), Tagged(2, 2)])
    assert isinstance(both, D.ConcatDataset)
    assert [both[i]["tokens"] for i in range(len(both))] == [[1, 0], [1, 1], [1, 2], [2, 0], [2, 1]]
    assert both.lengths.tolist() == [2] * 5
    with pytest.raises(IndexError):
        both[5]
    single = Tagged(1, 3)
    assert D.combine([single]) is single and D.combine(single) is single


def test_weights_set_each_datasets_share():
    mixed = D.combine([Tagged(1, 100, weight=3), Tagged(2, 10, weight=1)], seed=0)
    assert isinstance(mixed, D.MixedDataset) and len(mixed) == 110
    counts = Counter(mixed[i]["tokens"][0] for i in range(len(mixed)))
    assert counts[1] + counts[2] == 110 and counts[1] in (82, 83)  # 3:1 of 110
    assert [counts[1], counts[2]] == mixed.counts
    small = Counter(tuple(mixed[i]["tokens"]) for i in range(len(mixed)) if mixed[i]["tokens"][0] == 2)
    assert set(small.values()) <= {2, 3}  # the small dataset is repeated evenly
    again = D.combine([Tagged(1, 100, weight=3), Tagged(2, 10, weight=1)], seed=0)
    assert [again[i] for i in range(len(again))] == [mixed[i] for i in range(len(mixed))]
    unweighted_entry = D.combine([Tagged(1, 10, weight=2), Tagged(2, 10)])  # no weight: 1
    assert Counter(unweighted_entry[i]["tokens"][0] for i in range(20)) == {1: 13, 2: 7}


def test_packed_and_unpacked_cannot_be_mixed_and_weights_must_be_positive():
    packed = Tagged(1, 4)
    packed.packed = True
    with pytest.raises(DataError, match="some datasets in the list are packed"):
        D.combine([packed, Tagged(2, 4)])
    with pytest.raises(DataError, match="one positive number per dataset"):
        D.MixedDataset([Tagged(1, 3), Tagged(2, 3)], [1, -1])
    with pytest.raises(DataError, match="list is empty"):
        D.combine([])


def test_config_list_of_builders_with_weights(plain, tmp_path):
    a = write_rows(tmp_path / "a.jsonl", many_rows(8))
    b = write_rows(tmp_path / "b.jsonl", many_rows(4, start=100))
    entries = [D.alpaca_dataset(plain, source="json", data_files=str(a), weight=1),
               D.alpaca_dataset(plain, source="json", data_files=str(b), weight=1)]
    mixed = D.combine(entries, seed=1)
    assert len(mixed) == 12
    from_b = sum("(#10" in plain.decode(mixed[i]["tokens"]) for i in range(len(mixed)))
    assert from_b == 6  # half of the samples, so b's 4 rows are repeated
    D.check_token_ids(mixed, plain.vocab_size)
    loader = D.build_loader(mixed, batch_size=4, seed=0)
    assert len(loader) == 3
    assert "a.jsonl + " in mixed.name and mixed.summary.kept == 12
