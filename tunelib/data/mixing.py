"""Several datasets as one: concatenated, or sampled by weights.

A config's `dataset` may be a list; the recipe builds each entry and calls `combine`:

    dataset:
      - _component_: tunelib.data.alpaca_dataset
        weight: 3
      - _component_: tunelib.data.chat_dataset
        source: json
        data_files: chats.jsonl
        weight: 1
"""

from __future__ import annotations

import numpy as np

from tunelib.data.packing import dataset_lengths
from tunelib.errors import DataError


class ConcatDataset:
    """The datasets one after another."""

    def __init__(self, datasets: list):
        self.datasets = list(datasets)
        self.collate = _one_collate(self.datasets)
        sizes = [len(d) for d in self.datasets]
        self._offsets = np.cumsum([0, *sizes])
        first = self.datasets[0]
        self.packed = getattr(first, "packed", False)
        self.pad_id = getattr(first, "pad_id", None)
        self.name = " + ".join(getattr(d, "name", "dataset") for d in self.datasets)
        self.weight = None
        self.lengths = np.concatenate([dataset_lengths(d) for d in self.datasets])
        summaries = [getattr(d, "summary", None) for d in self.datasets]
        self.summary = sum(summaries[1:], summaries[0]) if all(summaries) else None
        prompts = [getattr(d, "example_prompt", None) for d in self.datasets]
        self.example_prompt = next((p for p in prompts if p), None)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def _locate(self, i: int) -> tuple[int, int]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        d = int(np.searchsorted(self._offsets, i, side="right") - 1)
        return d, i - int(self._offsets[d])

    def __getitem__(self, i: int):
        d, j = self._locate(int(i))
        return self.datasets[d][j]

    def find_token_id(self, limit: int):
        from tunelib.data.checks import find_token_id

        for d in self.datasets:
            hit = find_token_id(d, limit)
            if hit is not None:
                return hit
        return None


class MixedDataset(ConcatDataset):
    """Items drawn from each dataset in proportion to its weight.

    One pass ("epoch") has `num_samples` items (default: the total size of the datasets);
    dataset k contributes round(num_samples * w_k / sum(w)) of them, going through its items
    in a seeded random order and starting over when it runs out (so a small, highly weighted
    dataset is repeated and a large, lightly weighted one is subsampled).
    """

    def __init__(self, datasets: list, weights: list[float], *, seed: int = 0,
                 num_samples: int | None = None):
        super().__init__(datasets)
        weights = np.asarray(weights, dtype=np.float64)
        if len(weights) != len(self.datasets) or not (weights > 0).all():
            raise DataError(f"dataset weights {weights.tolist()} must be one positive number per dataset")
        total = num_samples if num_samples is not None else len(self.lengths)
        counts = _split_counts(total, weights / weights.sum())
        rng = np.random.default_rng(seed)
        picks = []
        for k, (d, count) in enumerate(zip(self.datasets, counts)):
            order = np.concatenate([rng.permutation(len(d)) for _ in range(-(-count // len(d)))])[:count]
            picks.append(order + self._offsets[k])
        self._index = rng.permutation(np.concatenate(picks)) if picks else np.zeros(0, dtype=np.int64)
        self.weights = weights.tolist()
        self.counts = counts
        self.lengths = self.lengths[self._index]

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int):
        return super().__getitem__(int(self._index[i]))


def _one_collate(datasets: list):
    """The `collate` every dataset brings (None: the loader's own). Raises DataError when they differ:
    preference pairs and SFT rows make different batches, so one list cannot hold both."""
    collates = [getattr(d, "collate", None) for d in datasets]
    odd = next((i for i, c in enumerate(collates) if c is not collates[0]), None)
    if odd is not None:
        raise DataError(f"the dataset list mixes {_kind(datasets[0])} and {_kind(datasets[odd])}, which make "
                        "different batches; list one kind (preference pairs combine only with preference pairs)")
    return collates[0]


def _kind(dataset) -> str:
    kind = "SFT rows" if getattr(dataset, "collate", None) is None else "preference pairs"
    return f"{kind} ({getattr(dataset, 'name', 'dataset')})"


def _split_counts(total: int, shares: np.ndarray) -> list[int]:
    """Integers proportional to `shares` that sum to `total` (largest remainders first)."""
    exact = shares * total
    counts = np.floor(exact).astype(int)
    for k in np.argsort(-(exact - counts))[: total - counts.sum()]:
        counts[k] += 1
    return counts.tolist()


def combine(datasets, *, seed: int = 0):
    """One dataset from the config's list: weighted sampling when any entry set `weight`
    (entries without one weigh 1), else concatenation. A single dataset comes back as is.
    Raises DataError when packed and unpacked datasets are mixed, or preference pairs and SFT rows.
    """
    datasets = list(datasets) if isinstance(datasets, (list, tuple)) else [datasets]
    if not datasets:
        raise DataError("the config's dataset list is empty")
    _one_collate(datasets)
    if len({bool(getattr(d, "packed", False)) for d in datasets}) > 1:
        raise DataError("some datasets in the list are packed and some are not; set packed the same "
                        "for all of them")
    if len(datasets) == 1:
        return datasets[0]
    weights = [getattr(d, "weight", None) for d in datasets]
    if all(w is None for w in weights):
        return ConcatDataset(datasets)
    return MixedDataset(datasets, [1.0 if w is None else w for w in weights], seed=seed)
