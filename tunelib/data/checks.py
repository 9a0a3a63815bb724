"""Checks the recipe runs on data before training."""

from __future__ import annotations

from tunelib.errors import DataError


def find_token_id(dataset, limit: int) -> tuple[int, str] | None:
    """The first token id >= `limit` (or negative) in `dataset`, with where it is.

    Datasets built by tunelib answer from their Arrow columns without reading rows; any other
    map-style dataset of {"tokens": ...} is read item by item.
    """
    own = getattr(dataset, "find_token_id", None)
    if own is not None:
        return own(limit)
    for i in range(len(dataset)):
        for token in dataset[i]["tokens"]:
            if not 0 <= int(token) < limit:
                return int(token), f"item {i} of the dataset"
    return None


def check_token_ids(dataset, vocab_size: int) -> None:
    """Raise DataError when a token id is outside the model's embedding table.

    A mismatch between tokenizer and model would otherwise surface as a CUDA device-side
    assert ("srcIndex < srcSelectDimSize") deep inside the first forward pass.
    """
    hit = find_token_id(dataset, vocab_size)
    if hit is not None:
        token, where = hit
        raise DataError(
            f"{where} has token id {token}, but the model's vocabulary has {vocab_size} ids "
            f"(0..{vocab_size - 1}): the tokenizer does not match the model; use the tokenizer "
            "from the model's folder (or a model whose vocab_size covers the tokenizer)"
        )
