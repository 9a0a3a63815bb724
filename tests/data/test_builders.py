"""Dataset builders: the trained tokens are exactly what the user meant the model to learn."""

from __future__ import annotations

import inspect
import json
import logging

import pytest

from support.data import (
    ALPACA_ROWS,
    OPENAI_ROWS,
    QA_ROWS,
    SHAREGPT_ROWS,
    TEXT_ROWS,
    write_rows,
)

import tunelib.data as D
from tunelib.data.prompts import alpaca_prompt
from tunelib.errors import DataError


def trained_ids(sample) -> list[int]:
    """The tokens the model learns to produce: token j when labels[j - 1] == token j."""
    tokens, labels = sample["tokens"], sample["labels"]
    return [tokens[j] for j in range(1, len(tokens)) if labels[j - 1] != -100]


def check_shifted(sample) -> None:
    tokens, labels = sample["tokens"], sample["labels"]
    assert len(tokens) == len(labels) and labels[-1] == -100
    assert all(label in (-100, tokens[i + 1]) for i, label in enumerate(labels[:-1]))


# -- what is trained --------------------------------------------------------------------------


def test_alpaca_trains_exactly_the_response_or_prompt_and_response(plain, tmp_path):
    path = write_rows(tmp_path / "alpaca.jsonl", ALPACA_ROWS)
    eos = plain.decode([plain.eos_id])
    only_response = D.alpaca_dataset(plain, source="json", data_files=str(path), train_on_input=False)
    with_prompt = D.alpaca_dataset(plain, source="json", data_files=str(path), train_on_input=True)
    assert len(only_response) == len(with_prompt) == len(ALPACA_ROWS)
    for i, row in enumerate(ALPACA_ROWS):
        prompt = alpaca_prompt(row["instruction"], row["input"])
        check_shifted(only_response[i])
        assert plain.decode(trained_ids(only_response[i])) == row["output"] + eos
        assert plain.decode(trained_ids(with_prompt[i])) == prompt + row["output"] + eos
        assert plain.decode(only_response[i]["tokens"]) == "<|begin_of_text|>" + prompt + row["output"] + eos


def test_alpaca_in_a_chat_template_trains_the_answer_and_end_of_turn(llama3, tmp_path):
    path = write_rows(tmp_path / "alpaca.jsonl", ALPACA_ROWS)
    ds = D.alpaca_dataset(llama3, source="json", data_files=str(path), train_on_input=False)
    for i, row in enumerate(ALPACA_ROWS):
        assert llama3.decode(trained_ids(ds[i])) == row["output"] + "<|eot_id|>"
        text = llama3.decode(ds[i]["tokens"])
        assert "<|start_header_id|>user<|end_header_id|>\n\nBelow is an instruction" in text


def test_alpaca_defaults_to_the_hub_dataset_and_says_when_it_cannot_be_reached(plain):
    assert inspect.signature(D.alpaca_dataset).parameters["source"].default == "tatsu-lab/alpaca"
    assert inspect.signature(D.alpaca_dataset).parameters["train_on_input"].default is True
    with pytest.raises(DataError, match="tatsu-lab/alpaca could not be downloaded.*source=json"):
        D.alpaca_dataset(plain)
    with pytest.raises(DataError, match="yahma/alpaca-cleaned could not be downloaded"):
        D.alpaca_cleaned_dataset(plain)


@pytest.mark.parametrize("suffix,source", [("jsonl", "json"), ("json", "json"), ("csv", "csv"),
                                           ("parquet", "parquet")])
def test_instruct_dataset_with_own_column_names_from_every_file_format(plain, tmp_path, suffix, source):
    path = write_rows(tmp_path / f"qa.{suffix}", QA_ROWS)
    ds = D.instruct_dataset(plain, source=source, data_files=str(path),
                            column_map={"input": "question", "output": "answer"})
    eos = plain.decode([plain.eos_id])
    assert [plain.decode(trained_ids(ds[i])) for i in range(len(ds))] == [r["answer"] + eos for r in QA_ROWS]


def test_instruct_dataset_system_prompt(llama3, tmp_path):
    path = write_rows(tmp_path / "qa.jsonl", QA_ROWS[:1])
    ds = D.instruct_dataset(llama3, source="json", data_files=str(path), new_system_prompt="Be exact.",
                            column_map={"input": "question", "output": "answer"})
    text = llama3.decode(ds[0]["tokens"])
    assert "Be exact.<|eot_id|>" in text
    assert llama3.decode(trained_ids(ds[0])) == QA_ROWS[0]["answer"] + "<|eot_id|>"


@pytest.mark.parametrize("rows,column", [(SHAREGPT_ROWS, None), (OPENAI_ROWS, None), (OPENAI_ROWS, "dialog")])
def test_chat_dataset_trains_every_assistant_turn(llama3, tmp_path, rows, column):
    if column:
        rows = [{column: r["messages"]} for r in rows]
    path = write_rows(tmp_path / "chat.jsonl", rows)
    ds = D.chat_dataset(llama3, source="json", data_files=str(path), conversation_column=column)
    for i, row in enumerate(rows):
        turns = next(iter(row.values()))
        answers = [t.get("value", t.get("content")) for t in turns if t.get("from", t.get("role")) in ("gpt", "assistant")]
        assert llama3.decode(trained_ids(ds[i])) == "".join(a + "<|eot_id|>" for a in answers)


def test_chat_dataset_train_on_input_and_system_prompt(llama3, tmp_path):
    path = write_rows(tmp_path / "chat.jsonl", SHAREGPT_ROWS[:1])
    ds = D.chat_dataset(llama3, source="json", data_files=str(path), train_on_input=True,
                        new_system_prompt="New rules.")
    text = llama3.decode(ds[0]["tokens"])
    assert "New rules." in text and "You are terse." not in text
    assert llama3.decode(trained_ids(ds[0])) == "Hi!<|eot_id|>Hello.<|eot_id|>What is 2 + 2?<|eot_id|>4.<|eot_id|>"


@pytest.mark.parametrize("suffix,source", [("jsonl", "json"), ("txt", "text")])
def test_text_completion_trains_every_token(plain, tmp_path, suffix, source):
    path = write_rows(tmp_path / f"corpus.{suffix}", TEXT_ROWS)
    ds = D.text_completion_dataset(plain, source=source, data_files=str(path))
    for i, row in enumerate(TEXT_ROWS):
        check_shifted(ds[i])
        assert ds[i]["tokens"] == plain.encode(row["text"].replace("\n", " ") if source == "text" else row["text"])
        assert ds[i]["labels"] == ds[i]["tokens"][1:] + [-100]
    no_eos = D.text_completion_dataset(plain, source=source, data_files=str(path), add_eos=False)
    assert no_eos[0]["tokens"] == ds[0]["tokens"][:-1]


# -- bad data is never silent ------------------------------------------------------------------


def test_row_missing_a_field_names_the_row_and_field(plain, tmp_path):
    rows = [dict(r) for r in ALPACA_ROWS]
    del rows[3]["output"]
    path = write_rows(tmp_path / "broken.jsonl", rows)
    # Row 3 of the file is its line 4, the line an editor shows.
    with pytest.raises(DataError, match=r"line 4 of .*broken.jsonl has no value for field 'output'") as e:
        D.alpaca_dataset(plain, source="json", data_files=str(path))
    assert "\n" not in str(e.value)


def test_missing_column_says_how_to_map_it(plain, tmp_path):
    path = write_rows(tmp_path / "qa.jsonl", QA_ROWS)
    with pytest.raises(DataError, match=r"no column 'input' \(its columns: question, answer\).*column_map"):
        D.instruct_dataset(plain, source="json", data_files=str(path))
    with pytest.raises(DataError, match="unknown field.*prompt.*the fields are input, output, system"):
        D.instruct_dataset(plain, source="json", data_files=str(path), column_map={"prompt": "question"})


def test_bad_conversations_name_row_and_turn(llama3, tmp_path):
    rows = [SHAREGPT_ROWS[1], {"conversations": [{"from": "human", "value": "x"}, {"from": "bot", "value": "y"}]}]
    path = write_rows(tmp_path / "chat.jsonl", rows)
    with pytest.raises(DataError, match=r"line 2 of .*turn 1 has from='bot'; use one of"):
        D.chat_dataset(llama3, source="json", data_files=str(path))
    rows = [{"messages": [{"role": "user", "content": "x"}, {"role": "assistant"}]}]
    path = write_rows(tmp_path / "chat2.jsonl", rows)
    with pytest.raises(DataError, match=r"line 1 of .*turn 1 has no field 'content'"):
        D.chat_dataset(llama3, source="json", data_files=str(path))


def test_rows_with_nothing_to_train_are_skipped_and_long_rows_cut_and_counted(tokenizer_folders, tmp_path, caplog):
    import tunelib.tokenizers as T

    tok = T.from_pretrained(tokenizer_folders("llama3").folder, max_seq_len=24, chat_format="plain")
    rows = [{"input": "Q: hi\nA:", "output": " hello"} for _ in range(6)]
    rows[1]["output"] = ""                     # nothing to learn
    rows[2]["output"] = " word" * 50           # response cut to fit
    rows[4]["input"] = "very long " * 30       # the prompt alone is longer than 24 tokens
    path = write_rows(tmp_path / "mixed.jsonl", rows)
    with caplog.at_level(logging.INFO, logger="tunelib.data"):
        ds = D.instruct_dataset(tok, source="json", data_files=str(path))
    s = ds.summary
    assert (s.rows, s.kept, s.skipped, s.cut_away, s.truncated) == (6, 4, 2, 1, 1)
    assert len(ds) == 4 and [ds.source_index(i) for i in range(4)] == [0, 2, 3, 5]
    assert max(len(ds[i]["tokens"]) for i in range(len(ds))) == 24
    assert tok.decode(trained_ids(ds[0])) == " hello<|eot_id|>"
    assert tok.decode(trained_ids(ds[1])).startswith(" word word")  # the cut row keeps its start
    assert s.tokens == sum(len(ds[i]["tokens"]) for i in range(len(ds)))
    assert s.trained == sum(len(trained_ids(ds[i])) for i in range(len(ds)))
    lines = [r.getMessage() for r in caplog.records if r.name == "tunelib.data"]
    assert any("4 rows kept, 2 skipped (nothing to train on; 1 of them only after truncation to 24 "
               "tokens), 1 truncated to 24 tokens" in line for line in lines), lines
    assert caplog.records[-1].levelno == logging.WARNING


def test_all_rows_skipped_is_an_error(plain, tmp_path):
    path = write_rows(tmp_path / "empty.jsonl", [{"instruction": "a", "input": "", "output": " "}])
    with pytest.raises(DataError, match="none of its 1 rows has anything to train on"):
        D.alpaca_dataset(plain, source="json", data_files=str(path))


def test_token_ids_beyond_the_model_vocabulary_stop_with_the_id(plain, tmp_path):
    path = write_rows(tmp_path / "alpaca.jsonl", ALPACA_ROWS)
    ds = D.alpaca_dataset(plain, source="json", data_files=str(path))
    D.check_token_ids(ds, plain.vocab_size)  # fine
    largest = max(max(ds[i]["tokens"]) for i in range(len(ds)))
    first_row = next(i for i in range(len(ds)) if largest in ds[i]["tokens"])
    with pytest.raises(DataError, match=rf"line {first_row + 1} of .* has token id {largest}, but the model's "
                                        rf"vocabulary has {largest} ids"):
        D.check_token_ids(ds, largest)
    packed = D.build_loader(ds, batch_size=1, packed=True, max_seq_len=256).dataset
    with pytest.raises(DataError, match=f"token id {largest}"):
        D.check_token_ids(packed, largest)
    with pytest.raises(DataError, match=f"item 0 of the dataset has token id 7"):
        D.check_token_ids([{"tokens": [1, 7]}], 5)


@pytest.mark.parametrize("kwargs,message", [
    ({"source": "json", "data_files": "nope.jsonl"}, "nope.jsonl.*check dataset.source"),
    ({"source": "json"}, "needs dataset.data_files"),
    ({"source": "json", "data_files": "{file}", "split": "validation"}, "Unknown split.*set dataset.split"),
    ({"source": "json", "data_files": "{file}", "streaming": True}, "streaming=True is not supported"),
    ({"source": "json", "data_files": "{bad}"}, "bad.jsonl could not be read: line 2 is not valid JSON"),
])
def test_unusable_sources_are_one_line_errors(plain, tmp_path, kwargs, message):
    good = write_rows(tmp_path / "good.jsonl", ALPACA_ROWS)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{not json\n')
    kwargs = {k: v.format(file=good, bad=bad) if isinstance(v, str) else v for k, v in kwargs.items()}
    with pytest.raises(DataError, match=message) as e:
        D.alpaca_dataset(plain, **kwargs)
    assert "\n" not in str(e.value)


def test_template_errors_name_the_row(tokenizer_folders, tmp_path):
    import tunelib.tokenizers as T

    gemma = T.from_pretrained(tokenizer_folders("gemma").folder, max_seq_len=256)  # no system role
    path = write_rows(tmp_path / "chat.jsonl", SHAREGPT_ROWS)
    with pytest.raises(DataError, match="line 1 of .*chat template rejected.*System role not supported"):
        D.chat_dataset(gemma, source="json", data_files=str(path))


# -- caching and options ------------------------------------------------------------------------


def test_tokenized_rows_are_cached_on_disk_and_keyed_on_the_tokenizer(tokenizer_folders, tmp_path, datasets_cache):
    import tunelib.tokenizers as T

    path = write_rows(tmp_path / "alpaca.jsonl", ALPACA_ROWS)
    tok = T.from_pretrained(tokenizer_folders("llama3").folder, max_seq_len=256, chat_format="plain")
    first = D.alpaca_dataset(tok, source="json", data_files=str(path))
    files = set(datasets_cache.rglob("*.arrow"))
    again = D.alpaca_dataset(tok, source="json", data_files=str(path))
    assert set(datasets_cache.rglob("*.arrow")) == files  # nothing re-tokenized
    assert [again[i] for i in range(len(again))] == [first[i] for i in range(len(first))]
    short = T.from_pretrained(tokenizer_folders("llama3").folder, max_seq_len=20, chat_format="plain")
    cut = D.alpaca_dataset(short, source="json", data_files=str(path))
    assert max(len(cut[i]["tokens"]) for i in range(len(cut))) == 20


def test_filter_fn_and_weight(plain, tmp_path):
    path = write_rows(tmp_path / "alpaca.jsonl", ALPACA_ROWS)
    ds = D.alpaca_dataset(plain, source="json", data_files=str(path), weight=2.0,
                          filter_fn=lambda row: row["input"] == "")
    assert len(ds) == sum(1 for r in ALPACA_ROWS if r["input"] == "") and ds.weight == 2.0
    with pytest.raises(DataError, match="dataset.weight=0"):
        D.alpaca_dataset(plain, source="json", data_files=str(path), weight=0)


def test_packed_needs_a_max_seq_len(tokenizer_folders, tmp_path):
    import tunelib.tokenizers as T

    tok = T.from_pretrained(tokenizer_folders("llama3").folder)
    path = write_rows(tmp_path / "alpaca.jsonl", ALPACA_ROWS)
    with pytest.raises(DataError, match="packed=True needs a pack length: set tokenizer.max_seq_len"):
        D.alpaca_dataset(tok, source="json", data_files=str(path), packed=True)


def test_builders_take_the_tokenizer_first_as_instantiate_passes_it():
    for builder in (D.alpaca_dataset, D.alpaca_cleaned_dataset, D.instruct_dataset, D.chat_dataset,
                    D.text_completion_dataset):
        params = list(inspect.signature(builder).parameters.values())
        assert params[0].name == "tokenizer" and params[0].kind is params[0].POSITIONAL_OR_KEYWORD
        assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in params[1:])
        assert builder.__doc__


def test_local_json_array_file(plain, tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(ALPACA_ROWS))
    assert len(D.alpaca_dataset(plain, source="json", data_files=str(path))) == len(ALPACA_ROWS)


def test_tokenizing_in_several_processes_gives_the_same_rows(llama3, tmp_path):
    from support.data import many_rows

    path = write_rows(tmp_path / "rows.jsonl", many_rows(64))
    one = D.alpaca_dataset(llama3, source="json", data_files=str(path))
    two = D.alpaca_dataset(llama3, source="json", data_files=str(path), num_proc=2)
    assert [two[i] for i in range(len(two))] == [one[i] for i in range(len(one))]


def test_import_does_not_load_datasets_or_transformers():
    import subprocess
    import sys

    code = "import sys, tunelib.data; print([m for m in ('transformers', 'datasets') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
