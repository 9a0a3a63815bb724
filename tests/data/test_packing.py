"""Packing: documents share a sequence without seeing each other, and the loss is unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tunelib.data as D
from support.data import many_rows, write_rows
from tunelib.data.packing import PackedDataset, plan_packs
from tunelib.errors import DataError


def test_plan_packs_is_greedy_in_order():
    lengths = np.array([3, 3, 3, 5, 9, 2, 8, 1])
    starts = plan_packs(lengths, 8)
    packs = [list(range(a, b)) for a, b in zip(starts[:-1], starts[1:])]
    # 3+3 fit, 3+5 fit, 9 alone (cut to 8), 2 alone (2+8 > 8), 8 alone, 1.
    assert packs == [[0, 1], [2, 3], [4], [5], [6], [7]]
    assert plan_packs(np.array([], dtype=np.int64), 8).tolist() == [0]


class Docs:
    """A map-style dataset of documents whose tokens are (doc number * 100 + position)."""

    def __init__(self, lengths):
        self.lengths = np.asarray(lengths)
        self.reads = 0

    def __len__(self):
        return len(self.lengths)

    def __getitem__(self, i):
        self.reads += 1
        tokens = [i * 100 + p for p in range(self.lengths[i])]
        return {"tokens": tokens, "labels": tokens[1:] + [-100]}


def test_packs_carry_restarting_positions_and_document_ids():
    docs = Docs([3, 4, 2, 6, 5])
    packed = PackedDataset(docs, max_seq_len=8)
    assert docs.reads == 0  # planned from lengths alone; no document read yet
    assert len(packed) == 3
    first = packed[0]
    assert first["tokens"] == [0, 1, 2, 100, 101, 102, 103]  # docs 0 and 1 (2 more would not fit... 3+4+2 > 8)
    assert first["position_ids"] == [0, 1, 2, 0, 1, 2, 3]
    assert first["document_ids"] == [0, 0, 0, 1, 1, 1, 1]
    # No label crosses a document boundary.
    assert first["labels"] == [1, 2, -100, 101, 102, 103, -100]
    everything = [t for i in range(len(packed)) for t in packed[i]["tokens"]]
    assert everything == [t for i in range(len(docs)) for t in docs[i]["tokens"]]
    assert packed.lengths.tolist() == [7, 8, 5]


def test_documents_longer_than_a_pack_are_cut_and_counted(caplog):
    packed = PackedDataset(Docs([3, 12, 2]), max_seq_len=8)
    assert packed.cut == 1
    assert "1 documents longer than 8 tokens were cut" in caplog.text
    long_pack = packed[1]
    assert len(long_pack["tokens"]) == 8 and long_pack["labels"][-1] == -100
    with pytest.raises(DataError, match="positive max_seq_len"):
        PackedDataset(Docs([1]), max_seq_len=0)


def _dataset(tok, tmp_path, n=12, **kwargs):
    path = write_rows(tmp_path / "rows.jsonl", many_rows(n))
    return D.instruct_dataset(tok, source="json", data_files=str(path),
                              column_map={"input": "instruction"}, **kwargs)


@pytest.fixture
def short_chat(tokenizer_folders):
    """Llama 3 headers without the 3.1 template's date block: about 30 tokens a row."""
    import tunelib.tokenizers as T

    return T.from_pretrained(tokenizer_folders("llama3").folder, max_seq_len=256, chat_format="llama3")


def test_packed_builder_and_loader_batches(short_chat, tmp_path):
    llama3 = short_chat
    unpacked = _dataset(llama3, tmp_path)
    packed = _dataset(llama3, tmp_path, packed=True)
    assert isinstance(packed, PackedDataset) and packed.max_seq_len == 256
    total = sum(len(unpacked[i]["tokens"]) for i in range(len(unpacked)))
    assert sum(len(packed[i]["tokens"]) for i in range(len(packed))) == total
    assert len(packed) < len(unpacked)
    loader = D.build_loader(packed, batch_size=2, shuffle=False, drop_last=False)
    for batch in loader:
        assert set(batch) == {"input_ids", "labels", "position_ids", "document_ids", "token_mask", "num_tokens"}
        assert batch["input_ids"].shape[1] == 256  # packs always have the same length
        pad = batch["input_ids"] == llama3.pad_id
        assert (batch["labels"][pad] == -100).all()


@pytest.mark.parametrize("family", ["llama3", "qwen2_5"])
def test_packed_loss_equals_unpacked_loss(tokenizer_folders, tmp_path, family):
    """The summed loss and token count of the same documents, packed or one per row."""
    import tunelib.tokenizers as T
    from support.models import make_hf_model_folder
    from tunelib.checkpoint import from_pretrained
    from tunelib.training.loss import LinearCrossEntropyLoss

    tok = T.from_pretrained(tokenizer_folders("llama3").folder, max_seq_len=256, chat_format="llama3")
    model = from_pretrained(make_hf_model_folder(tmp_path / "model", family, vocab_size=tok.vocab_size))
    data = _dataset(tok, tmp_path, n=10, train_on_input=True)

    def summed_loss(loader):
        loss, count = torch.zeros((), dtype=torch.float64), 0
        for batch in loader:
            with torch.no_grad():
                logits = model(batch["input_ids"], position_ids=batch["position_ids"],
                               document_ids=batch.get("document_ids"))
                chunked = LinearCrossEntropyLoss(num_output_chunks=3)(model, batch)
            plain = F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(), reduction="sum")
            torch.testing.assert_close(chunked, plain, rtol=1e-5, atol=1e-4)
            loss += plain.double()
            count += int((batch["labels"] != -100).sum())
        return loss, count

    unpacked = D.build_loader(data, batch_size=1, shuffle=False, drop_last=False)
    packed = D.build_loader(data, batch_size=2, shuffle=False, drop_last=False, packed=True, max_seq_len=100)
    assert len(packed.dataset) < len(data)  # several documents per pack
    (loss_a, n_a), (loss_b, n_b) = summed_loss(unpacked), summed_loss(packed)
    assert n_a == n_b == data.summary.trained
    torch.testing.assert_close(loss_b / n_b, loss_a / n_a, rtol=1e-5, atol=1e-5)


def test_packing_plans_a_large_dataset_without_reading_it():
    lengths = np.random.default_rng(0).integers(20, 600, size=200_000)
    docs = Docs(lengths)
    packed = PackedDataset(docs, max_seq_len=2048)
    assert docs.reads == 0
    assert packed.lengths.sum() == lengths.sum() and packed.lengths.max() <= 2048
    assert packed.lengths.mean() > 0.8 * 2048  # greedy packing fills packs well
