"""What the model will learn: samples decoded, with the trained tokens marked.

`tune preview --config C` prints this before any GPU time is spent (axolotl's
`preprocess --debug` showed how much silent masking bugs this catches).
"""

from __future__ import annotations

from tunelib.data.labels import IGNORE_INDEX

_GREEN, _RESET = "\033[32m", "\033[0m"
OPEN, CLOSE = "«", "»"  # marks trained text when colour is off


def trained_flags(sample: dict) -> list[bool]:
    """For each token, whether the model learns to produce it: token j is trained when
    labels[j - 1] (the target of the position before it) is that token."""
    tokens, labels = sample["tokens"], sample["labels"]
    return [False] + [labels[j - 1] != IGNORE_INDEX for j in range(1, len(tokens))]


def _runs(flags: list[bool]) -> list[tuple[int, int, bool]]:
    runs, start = [], 0
    for j in range(1, len(flags) + 1):
        if j == len(flags) or flags[j] != flags[start]:
            runs.append((start, j, flags[start]))
            start = j
    return runs


def render_sample(sample: dict, tokenizer, *, color: bool = False) -> str:
    """One sample as text, trained parts green (color) or between « and »."""
    tokens = list(sample["tokens"])
    flags = trained_flags(sample)
    pieces, decoded_before = [], ""
    for start, end, trained in _runs(flags):
        # Decoding prefixes keeps the spaces a tokenizer attaches to word starts.
        decoded = tokenizer.decode(tokens[:end])
        text = decoded[len(decoded_before):] if decoded.startswith(decoded_before) \
            else tokenizer.decode(tokens[start:end])
        decoded_before = decoded
        if trained:
            text = f"{_GREEN}{text}{_RESET}" if color else f"{OPEN}{text}{CLOSE}"
        pieces.append(text)
    return "".join(pieces)


def preview(dataset, tokenizer, n: int = 3, *, color: bool = False) -> str:
    """The first `n` samples of `dataset`, decoded with `tokenizer`, trained text marked.

    Returns the text (the caller prints it); a header per sample gives its token counts,
    packed samples list their documents, and a preference pair shows its chosen side, then
    its rejected side.
    """
    lines = []
    if not color:
        lines.append(f"(trained text is between {OPEN} and {CLOSE})")
    for i in range(min(n, len(dataset))):
        sample = dataset[i]
        if "chosen_tokens" in sample:
            lines += _pair_lines(i, sample, tokenizer, color)
            continue
        flags = trained_flags(sample)
        documents = len(set(sample["document_ids"])) if "document_ids" in sample else None
        header = f"--- sample {i}: {len(sample['tokens'])} tokens, {sum(flags)} trained"
        if documents:
            header += f", {documents} document{'s' if documents > 1 else ''}"
        lines.append(header + " ---")
        if documents:
            for doc in _split_documents(sample):
                lines.append(render_sample(doc, tokenizer, color=color))
                lines.append("")
        else:
            lines.append(render_sample(sample, tokenizer, color=color))
    return "\n".join(lines)


def _pair_lines(i: int, pair: dict, tokenizer, color: bool) -> list[str]:
    lines = [f"--- sample {i}: preference pair ---"]
    for side in ("chosen", "rejected"):
        sample = {"tokens": pair[f"{side}_tokens"], "labels": pair[f"{side}_labels"]}
        lines.append(f"[{side}: {len(sample['tokens'])} tokens, {sum(trained_flags(sample))} trained]")
        lines.append(render_sample(sample, tokenizer, color=color))
    return lines


def _split_documents(pack: dict) -> list[dict]:
    docs, start, ids = [], 0, pack["document_ids"]
    for j in range(1, len(ids) + 1):
        if j == len(ids) or ids[j] != ids[start]:
            docs.append({"tokens": pack["tokens"][start:j], "labels": pack["labels"][start:j]})
            start = j
    return docs
