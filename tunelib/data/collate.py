"""Batches of samples as padded tensors."""

from __future__ import annotations

import torch

from tunelib.data.labels import IGNORE_INDEX
from tunelib.errors import DataError


def collate(samples: list[dict], *, pad_id: int = 0, pad_to: int | None = None,
            pad_to_multiple_of: int = 1) -> dict[str, torch.Tensor]:
    """Stack samples into (B, T) int64 tensors, padding on the right.

    T is the longest sample, rounded up to `pad_to_multiple_of`, or exactly `pad_to` (fixed
    shapes help torch.compile). Returns input_ids (pads = `pad_id`), labels (pads = -100),
    position_ids (0, 1, ... per sample, or the pack's own) and, for packed samples,
    document_ids (pads get a document of their own), token_mask (True on real tokens, False on
    padding: what a mixture-of-experts load-balancing loss leaves out), and num_tokens, the
    count of real tokens. Raises DataError when a sample is longer than `pad_to`.
    """
    longest = max(len(s["tokens"]) for s in samples)
    if pad_to is not None:
        if longest > pad_to:
            raise DataError(f"a sample has {longest} tokens but the loader's pad_to is {pad_to}; "
                            "set pad_to to at least tokenizer.max_seq_len")
        length = pad_to
    else:
        length = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    packed = "document_ids" in samples[0]
    batch = {
        "input_ids": torch.full((len(samples), length), pad_id, dtype=torch.long),
        "labels": torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long),
        "position_ids": torch.arange(length, dtype=torch.long).repeat(len(samples), 1),
        "token_mask": torch.zeros((len(samples), length), dtype=torch.bool),
    }
    if packed:
        batch["document_ids"] = torch.zeros((len(samples), length), dtype=torch.long)
    # Real (non-padding) tokens, for tokens-per-second.
    batch["num_tokens"] = torch.tensor(sum(len(s["tokens"]) for s in samples), dtype=torch.long)
    for row, s in enumerate(samples):
        n = len(s["tokens"])
        batch["input_ids"][row, :n] = torch.as_tensor(s["tokens"], dtype=torch.long)
        batch["labels"][row, :n] = torch.as_tensor(s["labels"], dtype=torch.long)
        batch["token_mask"][row, :n] = True
        if packed:
            positions = torch.as_tensor(s["position_ids"], dtype=torch.long)
            documents = torch.as_tensor(s["document_ids"], dtype=torch.long)
            batch["position_ids"][row, :n] = positions
            batch["position_ids"][row, n:] = torch.arange(length - n)
            batch["document_ids"][row, :n] = documents
            batch["document_ids"][row, n:] = (int(documents.max()) + 1) if n else 0
    return batch


def collate_pairs(samples: list[dict], *, pad_id: int = 0, pad_to: int | None = None,
                  pad_to_multiple_of: int = 1) -> dict[str, torch.Tensor]:
    """Stack B preference pairs into one batch of 2B rows, so a pair goes through the model together.

    Rows 0..B-1 are the chosen sides and rows B..2B-1 the rejected ones, in the same order
    (row i and row B + i are one pair). Padding, position_ids and num_tokens are `collate`'s,
    with the same arguments; labels are -100 on the prompt and on padding. Samples numbered by the
    loader (`sample_index`) give `pair_index` (B,), their indices in the dataset.
    """
    rows = [{"tokens": s[f"{side}_tokens"], "labels": s[f"{side}_labels"]}
            for side in ("chosen", "rejected") for s in samples]
    batch = collate(rows, pad_id=pad_id, pad_to=pad_to, pad_to_multiple_of=pad_to_multiple_of)
    if all("sample_index" in s for s in samples):  # the loader numbers them: pair_index, (B,)
        batch["pair_index"] = torch.tensor([s["sample_index"] for s in samples], dtype=torch.long)
    return batch
