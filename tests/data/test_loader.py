"""The loader: a known length, a seeded order, disjoint shards, and exact resume."""

from __future__ import annotations

import pytest
import torch

import tunelib.data as D
from tunelib.data.collate import collate
from tunelib.errors import DataError


class Numbers:
    """Sample i has tokens [i, i, ...] of length i % 5 + 2, so batches show which items they hold."""

    pad_id = 999

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        tokens = [i] * (i % 5 + 2)
        return {"tokens": tokens, "labels": tokens[1:] + [-100]}


def items(batch) -> list[int]:
    return batch["input_ids"][:, 0].tolist()


def epoch_items(loader) -> list[list[int]]:
    return [items(b) for b in loader]


def test_length_and_one_pass_over_the_data():
    loader = D.build_loader(Numbers(23), batch_size=4, seed=1)
    assert len(loader) == 5  # 23 // 4, the last partial batch dropped
    seen = epoch_items(loader)
    assert len(seen) == 5 and all(len(b) == 4 for b in seen)
    flat = [i for b in seen for i in b]
    assert len(set(flat)) == 20
    keep_all = D.build_loader(Numbers(23), batch_size=4, seed=1, drop_last=False)
    assert len(keep_all) == 6
    assert sorted(i for b in epoch_items(keep_all) for i in b) == list(range(23))


def test_order_is_seeded_and_changes_with_the_epoch():
    a = D.build_loader(Numbers(40), batch_size=4, seed=7)
    b = D.build_loader(Numbers(40), batch_size=4, seed=7)
    first = epoch_items(a)
    assert first == epoch_items(b)
    second = epoch_items(a)  # iterating again starts the next epoch
    assert a.epoch == 1 and first != second
    a.set_epoch(0)
    assert epoch_items(a) == first
    assert epoch_items(D.build_loader(Numbers(40), batch_size=4, seed=8)) != first
    in_order = D.build_loader(Numbers(8), batch_size=4, shuffle=False)
    assert epoch_items(in_order) == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.parametrize("drop_last", [True, False])
def test_ranks_get_disjoint_shards_of_the_same_size(drop_last):
    n, world = 37, 3
    loaders = [D.build_loader(Numbers(n), batch_size=4, seed=3, rank=r, world_size=world, drop_last=drop_last)
               for r in range(world)]
    assert len({len(loader) for loader in loaders}) == 1
    batches = [epoch_items(loader) for loader in loaders]
    shards = [[i for b in rank_batches for i in b] for rank_batches in batches]
    assert len({len(s) for s in shards}) == 1
    if drop_last:
        assert not set(shards[0]) & set(shards[1]) and not set(shards[1]) & set(shards[2])
        assert len(set().union(*shards)) == len(loaders[0]) * 4 * world
    else:
        assert set().union(*shards) == set(range(n))  # everything, a few samples twice
    # Together, step k of all ranks is one global batch of the single-process order.
    single = D.build_loader(Numbers(n), batch_size=4 * world, seed=3, drop_last=drop_last)
    if drop_last:
        assert [sorted(sum((rank_batches[k] for rank_batches in batches), [])) for k in range(len(single))] == \
            [sorted(b) for b in epoch_items(single)]


@pytest.mark.parametrize("stop_after", [0, 3, 6])
def test_resume_continues_with_exactly_the_next_batch(stop_after):
    reference = D.build_loader(Numbers(30), batch_size=4, seed=5)
    expected = []
    for epoch in range(2):
        reference.set_epoch(epoch)
        expected += epoch_items(reference)

    interrupted = D.build_loader(Numbers(30), batch_size=4, seed=5)
    got, state = [], None
    for epoch in range(2):
        interrupted.set_epoch(epoch)
        for batch in interrupted:
            got.append(items(batch))
            if len(got) == len(interrupted) + stop_after:
                state = interrupted.state_dict()
                break
        if state:
            break
    resumed = D.build_loader(Numbers(30), batch_size=4, seed=5)
    resumed.load_state_dict(state)
    for epoch in range(resumed.epoch, 2):
        resumed.set_epoch(epoch)  # the saved epoch continues where it stopped
        got += epoch_items(resumed)
    assert got == expected


def test_resume_refuses_changed_data_or_settings():
    state = D.build_loader(Numbers(30), batch_size=4, seed=5).state_dict()
    with pytest.raises(DataError, match="samples in the dataset was 30 .* is 31 now"):
        D.build_loader(Numbers(31), batch_size=4, seed=5).load_state_dict(state)
    with pytest.raises(DataError, match="batch_size was 4 .* is 2 now"):
        D.build_loader(Numbers(30), batch_size=2, seed=5).load_state_dict(state)


def test_bad_loader_settings():
    with pytest.raises(DataError, match="fewer than one batch of 8 x 2 rank"):
        D.build_loader(Numbers(10), batch_size=8, world_size=2)
    with pytest.raises(DataError, match="rank 2 is not in 0..1"):
        D.build_loader(Numbers(10), batch_size=1, rank=2, world_size=2)
    with pytest.raises(DataError, match="batch_size=0"):
        D.build_loader(Numbers(10), batch_size=0)
    with pytest.raises(DataError, match="packed=True needs a pack length"):
        D.build_loader(Numbers(10), batch_size=1, packed=True)


def test_collate_pads_to_the_longest_or_a_fixed_length():
    samples = [{"tokens": [5, 6, 7], "labels": [6, 7, -100]}, {"tokens": [8], "labels": [-100]}]
    batch = collate(samples, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[6, 7, -100], [-100, -100, -100]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 1, 2]]
    assert batch["token_mask"].tolist() == [[True, True, True], [True, False, False]]
    assert all(t.dtype == torch.long for k, t in batch.items() if k != "token_mask")
    assert collate(samples, pad_id=0, pad_to=6)["input_ids"].shape == (2, 6)
    assert collate(samples, pad_id=0, pad_to_multiple_of=4)["input_ids"].shape == (2, 4)
    with pytest.raises(DataError, match="a sample has 3 tokens but the loader's pad_to is 2"):
        collate(samples, pad_id=0, pad_to=2)


def test_loader_pads_with_the_datasets_pad_id_to_a_fixed_length():
    loader = D.build_loader(Numbers(12), batch_size=3, pad_to=16, shuffle=False)
    batch = next(iter(loader))
    assert batch["input_ids"].shape == (3, 16)
    assert batch["input_ids"][0, -1] == Numbers.pad_id
    assert (batch["labels"][batch["input_ids"] == Numbers.pad_id] == -100).all()


def test_workers_yield_the_same_batches():
    one = D.build_loader(Numbers(20), batch_size=4, seed=2)
    two = D.build_loader(Numbers(20), batch_size=4, seed=2, num_workers=1)
    assert epoch_items(two) == epoch_items(one)


def test_real_dataset_batches(llama3, tmp_path):
    from support.data import ALPACA_ROWS, write_rows

    path = write_rows(tmp_path / "a.jsonl", ALPACA_ROWS)
    data = D.alpaca_dataset(llama3, source="json", data_files=str(path))
    loader = D.build_loader(data, batch_size=2, seed=0)
    batch = next(iter(loader))
    assert set(batch) == {"input_ids", "labels", "position_ids", "token_mask", "num_tokens"}
    assert batch["input_ids"].shape == batch["labels"].shape == batch["position_ids"].shape
    pads = batch["input_ids"] == llama3.pad_id
    assert (batch["labels"][pads] == -100).all()
    # token_mask: each row's own tokens, then padding to the longest row
    lengths = batch["token_mask"].sum(1).tolist()
    assert sum(lengths) == batch["num_tokens"] and max(lengths) == batch["input_ids"].shape[1] > min(lengths)
    assert all(batch["token_mask"][r, :n].all() and not batch["token_mask"][r, n:].any() for r, n in enumerate(lengths))
    # Labels are already shifted: a trained label is the next input token.
    rows, cols = torch.nonzero(batch["labels"][:, :-1] != -100, as_tuple=True)
    assert torch.equal(batch["labels"][rows, cols], batch["input_ids"][rows, cols + 1])
