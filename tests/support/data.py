"""Small datasets for tests, written as the files users have (jsonl, json, csv, parquet, txt).

    path = write_rows(tmp_path / "train.jsonl", ALPACA_ROWS)
    ds = tunelib.data.alpaca_dataset(tok, source="json", data_files=str(path))

Rows are short so tiny tokenizers keep them well under 256 tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

ALPACA_ROWS = [
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "2 + 3 = 5."},
    {"instruction": "Say hello in French.", "input": "", "output": "Bonjour !"},
    {"instruction": "Name a colour.", "input": "", "output": "Blue."},
    {"instruction": "Reverse the word.", "input": "stressed", "output": "desserts"},
    {"instruction": "Translate to Chinese.", "input": "world", "output": "世界"},
    {"instruction": "Write a Python function that doubles x.", "input": "",
     "output": "def double(x):\n    return 2 * x"},
]

# The same rows with the column names a user's own file might have.
QA_ROWS = [{"question": r["instruction"] + (" " + r["input"] if r["input"] else ""),
            "answer": r["output"]} for r in ALPACA_ROWS]

SHAREGPT_ROWS = [
    {"conversations": [
        {"from": "system", "value": "You are terse."},
        {"from": "human", "value": "Hi!"},
        {"from": "gpt", "value": "Hello."},
        {"from": "human", "value": "What is 2 + 2?"},
        {"from": "gpt", "value": "4."},
    ]},
    {"conversations": [
        {"from": "human", "value": "Capital of France?"},
        {"from": "gpt", "value": "Paris."},
    ]},
]

OPENAI_ROWS = [
    {"messages": [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello."},
    ]},
    {"messages": [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": [{"type": "text", "text": "Sky colour?"}]},
        {"role": "assistant", "content": "Blue."},
    ]},
]

TEXT_ROWS = [
    {"text": "The quick brown fox jumps over the lazy dog."},
    {"text": "def add(a, b):\n    return a + b"},
    {"text": "你好，世界。"},
    {"text": "Numbers 1 22 333 4444."},
]


def write_rows(path, rows: list[dict]) -> Path:
    """Write `rows` in the format the file name says: .jsonl, .json, .csv, .parquet, .txt
    (.txt takes the "text" field, one row a line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    elif suffix == ".json":
        path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    elif suffix in (".csv", ".parquet"):
        import pyarrow as pa

        table = pa.Table.from_pylist(rows)
        if suffix == ".csv":
            import pyarrow.csv as pacsv

            pacsv.write_csv(table, path)
        else:
            import pyarrow.parquet as pq

            pq.write_table(table, path)
    elif suffix == ".txt":
        path.write_text("".join(r["text"].replace("\n", " ") + "\n" for r in rows), encoding="utf-8")
    else:
        raise ValueError(f"unknown format {suffix}")
    return path


def many_rows(n: int, *, start: int = 0) -> list[dict]:
    """`n` distinct short instruction rows (for loaders, packing and mixing)."""
    return [{"instruction": f"Count to {i % 7 + 1}.", "input": "",
             "output": " ".join(str(k) for k in range(1, i % 7 + 2)) + f" (#{i})"}
            for i in range(start, start + n)]


def short_outputs(row: dict) -> bool:
    """A `dataset.filter_fn` for tests: keep rows whose answer is under 12 characters."""
    return len(row["output"]) < 12


def longer_than(min_chars: int):
    """A `dataset.filter_fn` factory for tests (`_component_: support.data.longer_than`)."""
    return lambda row: len(row["output"]) > min_chars
