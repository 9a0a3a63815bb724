"""The training data: fixed packs of pre-tokenized documents, the same for every library.

Documents are random token ids (lengths drawn around `mean_doc_len`), the first 30% of each
masked from the loss like an instruction prompt. They are packed greedily, in order, into
packs of exactly `seq_len` positions; the rest of a pack is padding. A step takes the next
`batch_size` packs; nothing is shuffled. Stored as JSON:

    {"seq_len": T, "packs": [[{"tokens": [...], "labels": [...]}, ...], ...]}

`labels[i]` is the target of position i (already shifted; the last of each document is -100,
so nothing is learned across documents). Each library gets its own view of the packs below:
the same tokens, the same targets, the same document boundaries.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

IGNORE = -100
PROMPT_FRACTION = 0.3


def make_packs(*, vocab_size: int, seq_len: int, n_packs: int, mean_doc_len: int, seed: int) -> list[list[dict]]:
    """`n_packs` packs of documents; ids 0-2 are left out (pad, bos, eos)."""
    rng = np.random.default_rng(seed)
    packs, current, used = [], [], 0
    while len(packs) < n_packs:
        n = int(np.clip(rng.normal(mean_doc_len, mean_doc_len / 2), 8, seq_len))
        if used + n > seq_len:
            packs.append(current)
            current, used = [], 0
            continue
        tokens = rng.integers(3, vocab_size, n).tolist()
        labels = tokens[1:] + [IGNORE]
        prompt = int(n * PROMPT_FRACTION)
        labels[: max(prompt - 1, 0)] = [IGNORE] * max(prompt - 1, 0)
        current.append({"tokens": tokens, "labels": labels})
        used += n
    return packs


def save(path: Path, seq_len: int, packs: list[list[dict]]) -> None:
    Path(path).write_text(json.dumps({"seq_len": seq_len, "packs": packs}))


def load(path: Path) -> tuple[int, list[list[dict]]]:
    data = json.loads(Path(path).read_text())
    return data["seq_len"], data["packs"]


def real_tokens(pack: list[dict]) -> int:
    """Non-padding tokens of a pack (what tokens/s counts)."""
    return sum(len(d["tokens"]) for d in pack)


def trained_tokens(pack: list[dict]) -> int:
    """Positions whose label is not ignored (what the loss is averaged over)."""
    return sum(sum(1 for y in d["labels"] if y != IGNORE) for d in pack)


# -- each library's view of one pack ------------------------------------------------------------


def as_shifted(pack: list[dict], seq_len: int) -> dict[str, list[int]]:
    """tunelib's packed item: tokens, shifted labels, per-document positions and document ids (unpadded)."""
    out = {"tokens": [], "labels": [], "position_ids": [], "document_ids": []}
    for i, d in enumerate(pack):
        out["tokens"] += d["tokens"]
        out["labels"] += d["labels"]
        out["position_ids"] += list(range(len(d["tokens"])))
        out["document_ids"] += [i] * len(d["tokens"])
    return out


def as_unshifted(pack: list[dict], seq_len: int) -> dict[str, list[int]]:
    """torchtune's and transformers' view, padded to seq_len: labels[i] is the target of position
    i - 1 (the model shifts them), positions restart per document and continue into the padding."""
    tokens, labels, positions, lens = [], [], [], []
    for d in pack:
        tokens += d["tokens"]
        labels += [IGNORE] + d["labels"][:-1]  # the first label of a document is never a target
        positions += list(range(len(d["tokens"])))
        lens.append(len(d["tokens"]))
    pad = seq_len - len(tokens)
    if pad:
        tokens += [0] * pad
        labels += [IGNORE] * pad
        positions += list(range(pad))
        lens.append(pad)
    return {"tokens": tokens, "labels": labels, "positions": positions, "seq_lens": lens}
