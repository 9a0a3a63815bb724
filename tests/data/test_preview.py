"""Preview: the first samples decoded, with exactly the trained text marked."""

from __future__ import annotations

from support.data import ALPACA_ROWS, SHAREGPT_ROWS, write_rows

import tunelib.data as D


def test_preview_marks_exactly_the_responses(llama3, tmp_path):
    path = write_rows(tmp_path / "chat.jsonl", SHAREGPT_ROWS)
    ds = D.chat_dataset(llama3, source="json", data_files=str(path))
    text = D.preview(ds, llama3, n=5)
    assert text.count("--- sample") == 2  # only as many as there are
    assert "«Hello.<|eot_id|>»" in text and "«4.<|eot_id|>»" in text and "«Paris.<|eot_id|>»" in text
    assert "«" not in text.split("--- sample 0")[1].split("«Hello.")[0]  # the prompt is not marked
    assert text.count("«") == 3 + 1  # and the legend line


def test_preview_with_train_on_input_and_colour(plain, tmp_path):
    path = write_rows(tmp_path / "a.jsonl", ALPACA_ROWS[:1])
    ds = D.alpaca_dataset(plain, source="json", data_files=str(path), train_on_input=True)
    text = D.preview(ds, plain, n=1)
    body = text.splitlines()[2:]
    assert "\n".join(body).startswith("<|begin_of_text|>«Below is an instruction")
    assert text.rstrip().endswith("2 + 3 = 5.<|eot_id|>»")
    coloured = D.preview(ds, plain, n=1, color=True)
    assert "\033[32mBelow is an instruction" in coloured and "«" not in coloured


def test_preview_of_packs_lists_their_documents(llama3, tmp_path):
    path = write_rows(tmp_path / "a.jsonl", ALPACA_ROWS)
    ds = D.alpaca_dataset(llama3, source="json", data_files=str(path), train_on_input=False)
    packed = D.build_loader(ds, batch_size=1, packed=True, max_seq_len=1024).dataset
    text = D.preview(packed, llama3, n=1)
    first = text.split("--- sample 1")[0]
    documents = len(packed.documents(0))
    assert documents > 1 and f"{documents} documents" in first
    assert first.count("<|begin_of_text|>") == documents
