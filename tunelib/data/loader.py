"""The resumable, sharded data loader the recipes iterate.

The order of one epoch is a pure function of (seed, epoch): a seeded permutation of the
dataset, cut into global batches of `batch_size * world_size` items, each split into one
slice per rank. So every rank knows its batches without talking to the others, `len()` is
known before training, and resuming only needs (epoch, batches done): no sample is seen
twice or skipped, and mid-epoch resume continues with exactly the next batch.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from tunelib.data.collate import collate
from tunelib.errors import DataError

_STATE_VERSION = 1


class _Batches(torch.utils.data.Sampler):
    """Index lists of one rank's batches start..end of an epoch, produced lazily."""

    def __init__(self, loader: Loader, order: np.ndarray, start: int):
        self.loader, self.order, self.start = loader, order, start

    def __iter__(self):
        for b in range(self.start, len(self.loader)):
            yield self.loader._batch(self.order, b)

    def __len__(self) -> int:
        return len(self.loader) - self.start


class _Numbered(torch.utils.data.Dataset):
    """`dataset`, each item with its index as `sample_index` (work kept per sample, such as DPO's
    precomputed reference log-probs, is looked up by it)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        return {**self.dataset[i], "sample_index": i}


class Loader:
    """Batches of one rank; see `build_loader`."""

    def __init__(self, dataset, *, batch_size: int, shuffle: bool, seed: int, rank: int,
                 world_size: int, drop_last: bool, pad_id: int, pad_to: int | None,
                 pad_to_multiple_of: int, num_workers: int, pin_memory: bool):
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        # A dataset may bring its own collate (preference pairs make 2B rows), same keywords; its
        # items then carry their index, so a batch says which samples it holds (`sample_index`).
        self._items = _Numbered(dataset) if getattr(dataset, "collate", None) else dataset
        self._collate = functools.partial(getattr(dataset, "collate", None) or collate, pad_id=pad_id,
                                          pad_to=pad_to, pad_to_multiple_of=pad_to_multiple_of)
        self._epoch = 0
        self._done = 0        # batches of the current epoch handed out
        self._resumed = False  # state was loaded and the epoch not yet restarted
        n = len(dataset)
        if drop_last:
            self._batches = n // (batch_size * world_size)
        else:
            self._batches = _ceil_div(_ceil_div(n, world_size), batch_size)
        if self._batches == 0:
            raise DataError(
                f"the dataset has {n} samples, fewer than one batch of {batch_size} x {world_size} "
                "rank(s); lower batch_size, add data, or set drop_last=False"
            )

    # -- size and position ------------------------------------------------------------------

    def __len__(self) -> int:
        """Batches per epoch on this rank (the same on every rank)."""
        return self._batches

    @property
    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its first batch; after `load_state_dict`, the saved epoch
        continues where it stopped instead."""
        if self._resumed and epoch == self._epoch:
            return
        self._epoch, self._done, self._resumed = epoch, 0, False

    def state_dict(self) -> dict:
        """Where the loader is: enough to continue with exactly the next batch."""
        return {"version": _STATE_VERSION, "epoch": self._epoch, "batches_done": self._done,
                "seed": self.seed, "shuffle": self.shuffle, "batch_size": self.batch_size,
                "world_size": self.world_size, "drop_last": self.drop_last,
                "num_samples": len(self.dataset)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict()`'s output. Raises DataError when the data or the
        batching changed since then (the saved position would mean other samples)."""
        for key in ("seed", "shuffle", "batch_size", "world_size", "drop_last", "num_samples"):
            now = len(self.dataset) if key == "num_samples" else getattr(self, key)
            if state.get(key) != now:
                what = "samples in the dataset" if key == "num_samples" else key
                raise DataError(
                    f"cannot resume the data order: {what} was {state.get(key)} when the checkpoint "
                    f"was saved and is {now} now; use the same data and settings, or start a new run"
                )
        self._epoch, self._done, self._resumed = int(state["epoch"]), int(state["batches_done"]), True

    # -- order --------------------------------------------------------------------------------

    def epoch_order(self, epoch: int) -> np.ndarray:
        """All sample indices of `epoch` in global order (every rank computes the same)."""
        n = len(self.dataset)
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(n)
        else:
            order = np.arange(n)
        if not self.drop_last:  # repeat the first samples so each rank gets as many
            order = np.concatenate([order, order[: (-n) % self.world_size]])
        return order

    def _batch(self, order: np.ndarray, b: int) -> list[int]:
        size = self.batch_size * self.world_size
        chunk = order[b * size : (b + 1) * size]
        share = len(chunk) // self.world_size
        return chunk[self.rank * share : (self.rank + 1) * share].tolist()

    def batch_indices(self, epoch: int, b: int) -> list[int]:
        """The sample indices of this rank's batch `b` of `epoch`."""
        return self._batch(self.epoch_order(epoch), b)

    def collate_items(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """The CPU batch of the dataset's items `indices`, collated as training batches are (for
        work done once over the data, such as DPO's precomputed reference log-probs)."""
        return self._collate([self._items[i] for i in indices])

    # -- iteration ------------------------------------------------------------------------------

    def __iter__(self):
        if self._done >= len(self) and not self._resumed:
            self._epoch, self._done = self._epoch + 1, 0  # the last epoch is over: next one
        self._resumed = False
        sampler = _Batches(self, self.epoch_order(self._epoch), self._done)
        # DataLoader draws its workers' base seed from the generator it is given, or else from
        # torch's global one. Its own generator keeps the global random state (dropout's) the
        # same whether an epoch starts here or a resumed run re-enters it halfway.
        generator = torch.Generator().manual_seed(hash((self.seed, self._epoch, self.rank)) % 2**62)
        batches = torch.utils.data.DataLoader(
            self._items, batch_sampler=sampler, collate_fn=self._collate,
            num_workers=self.num_workers, pin_memory=self.pin_memory, generator=generator,
        )
        for batch in batches:
            self._done += 1
            yield batch

    def __repr__(self) -> str:
        return (f"Loader(samples={len(self.dataset)}, batch_size={self.batch_size}, "
                f"rank={self.rank}/{self.world_size}, batches_per_epoch={len(self)})")


def build_loader(
    dataset,
    *,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    packed: bool = False,
    max_seq_len: int | None = None,
    pad_to: int | None = None,
    pad_to_multiple_of: int = 1,
    pad_id: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = True,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Loader:
    """Batches of `dataset` for one rank, as dicts of (B, T) int64 tensors: input_ids, labels,
    position_ids, and document_ids when packed. A dataset with a `collate` attribute makes its
    own batches with it (preference pairs: 2B rows, see `collate_pairs`).

    `batch_size`: samples per batch on this rank. `shuffle`, `seed`: the order of each epoch
    is a seeded permutation of (seed, epoch), identical on every rank and every run.
    `packed`: pack an unpacked dataset to `max_seq_len` (default: the dataset's) first; a
    dataset built with packed=True is used as is. Packs are always padded to their length.
    `pad_to`: pad every batch to this fixed length (else to the longest sample, rounded up to
    `pad_to_multiple_of`). `pad_id`: default the dataset's (the tokenizer's pad id), else 0.
    `rank`, `world_size`: this process's shard. `drop_last`: drop the incomplete last global
    batch (fixed shapes); without it, the last one is smaller and the first samples are
    repeated so every rank gets the same number of batches. `num_workers`, `pin_memory`: as
    torch's DataLoader.
    The loader has `len()` (batches per epoch), `set_epoch(e)`, `state_dict()` and
    `load_state_dict()`. Raises DataError for settings that cannot work.
    """
    if batch_size < 1:
        raise DataError(f"batch_size={batch_size}; use a positive number")
    if world_size < 1 or not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is not in 0..{world_size - 1} (world_size={world_size})")
    if packed and getattr(dataset, "collate", None) is not None:
        raise DataError("packed=True: this dataset makes its own batches (preference pairs), which cannot be "
                        "packed; remove packed")
    if packed and not getattr(dataset, "packed", False):
        from tunelib.data.packing import PackedDataset

        max_seq_len = max_seq_len or getattr(dataset, "max_seq_len", None)
        if max_seq_len is None:
            raise DataError("packed=True needs a pack length: set tokenizer.max_seq_len")
        dataset = PackedDataset(dataset, max_seq_len)
    if getattr(dataset, "packed", False):
        pack_length = getattr(dataset, "max_seq_len", None) or _pack_length(dataset)
        pad_to = pad_to or pack_length
    if pad_id is None:
        pad_id = getattr(dataset, "pad_id", None)
    return Loader(dataset, batch_size=batch_size, shuffle=shuffle, seed=seed, rank=rank,
                  world_size=world_size, drop_last=drop_last, pad_id=0 if pad_id is None else pad_id,
                  pad_to=pad_to, pad_to_multiple_of=pad_to_multiple_of, num_workers=num_workers,
                  pin_memory=pin_memory)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _pack_length(dataset) -> int | None:
    """The pack length of a combination of packed datasets (they must agree)."""
    lengths = {getattr(d, "max_seq_len", None) for d in getattr(dataset, "datasets", [])}
    if len(lengths) > 1:
        raise DataError(f"the packed datasets have different pack lengths {sorted(lengths)}; "
                        "use one tokenizer.max_seq_len")
    return lengths.pop() if lengths else None
