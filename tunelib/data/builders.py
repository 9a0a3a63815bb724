"""Dataset builders for configs: `dataset._component_=tunelib.data.alpaca_dataset`, ...

Each takes the tokenizer first (the recipe calls `instantiate(cfg.dataset, tokenizer)`) and
returns a map-style dataset of {"tokens", "labels"} (a PackedDataset with `packed=True`).
Extra keywords go to `datasets.load_dataset` (`data_files`, `name`, `cache_dir`, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from tunelib.data.messages import (
    Message,
    add_system_prompt,
    openai_to_messages,
    sharegpt_to_messages,
    with_masks,
)
from tunelib.data.prompts import alpaca_prompt
from tunelib.data.rows import RowError, RowNames
from tunelib.data.sources import describe_source, load_source
from tunelib.data.tokenized import tokenize_dataset
from tunelib.errors import DataError


def alpaca_dataset(
    tokenizer,
    *,
    source: str = "tatsu-lab/alpaca",
    column_map: Mapping[str, str] | None = None,
    train_on_input: bool = True,
    packed: bool = False,
    split: str = "train",
    filter_fn: Callable | None = None,
    weight: float | None = None,
    num_proc: int | None = None,
    **load_dataset_kwargs,
):
    """Alpaca-style rows (instruction, optional input, output) in the Alpaca prompt.

    `column_map` maps these field names to the dataset's columns ({"output": "response"}).
    `train_on_input` (default True, as torchtune) also trains on the prompt.
    `packed`: pack rows to `tokenizer.max_seq_len`. `filter_fn(row) -> bool` keeps rows.
    `weight`: this dataset's share when a config lists several (see `tunelib.data.combine`).
    `num_proc`: processes for tokenizing. Raises DataError for a row without instruction or
    output (naming the row and field).
    """
    fields = _columns(column_map, ("instruction", "input", "output"))

    def convert(row, index, name):
        instruction = _text(row, fields["instruction"], index, name)
        extra = _text(row, fields["input"], index, name, required=False)
        output = _text(row, fields["output"], index, name)
        messages = [Message("user", alpaca_prompt(instruction, extra)), Message("assistant", output)]
        return with_masks(messages, train_on_input)

    return _build(tokenizer, "alpaca", source, split, load_dataset_kwargs, filter_fn,
                  lambda raw: (convert, [fields["instruction"], fields["output"]]), packed=packed,
                  weight=weight, num_proc=num_proc,
                  settings={"columns": fields, "train_on_input": train_on_input})


def alpaca_cleaned_dataset(
    tokenizer,
    *,
    source: str = "yahma/alpaca-cleaned",
    column_map: Mapping[str, str] | None = None,
    train_on_input: bool = True,
    packed: bool = False,
    split: str = "train",
    filter_fn: Callable | None = None,
    weight: float | None = None,
    num_proc: int | None = None,
    **load_dataset_kwargs,
):
    """`alpaca_dataset` on the cleaned Alpaca data (yahma/alpaca-cleaned), torchtune's default
    in many configs. Same arguments."""
    return alpaca_dataset(tokenizer, source=source, column_map=column_map, train_on_input=train_on_input,
                          packed=packed, split=split, filter_fn=filter_fn, weight=weight,
                          num_proc=num_proc, **load_dataset_kwargs)


def instruct_dataset(
    tokenizer,
    *,
    source: str,
    column_map: Mapping[str, str] | None = None,
    train_on_input: bool = False,
    new_system_prompt: str | None = None,
    packed: bool = False,
    split: str = "train",
    filter_fn: Callable | None = None,
    weight: float | None = None,
    num_proc: int | None = None,
    **load_dataset_kwargs,
):
    """One prompt and one response a row: fields "input" and "output", and an optional
    "system", mapped to the dataset's columns with `column_map`
    (`dataset.column_map.input=question dataset.column_map.output=answer`).

    The prompt goes through the tokenizer's chat format as a user message. Other arguments as
    `alpaca_dataset`; `new_system_prompt` adds (or replaces) a system message.
    """
    fields = _columns(column_map, ("input", "output", "system"))

    def convert(row, index, name):
        messages = []
        system = _text(row, fields["system"], index, name, required=False)
        if system:
            messages.append(Message("system", system))
        messages.append(Message("user", _text(row, fields["input"], index, name)))
        messages.append(Message("assistant", _text(row, fields["output"], index, name)))
        return with_masks(add_system_prompt(messages, new_system_prompt), train_on_input)

    return _build(tokenizer, "instruct", source, split, load_dataset_kwargs, filter_fn,
                  lambda raw: (convert, [fields["input"], fields["output"]]), packed=packed,
                  weight=weight, num_proc=num_proc,
                  settings={"columns": fields, "train_on_input": train_on_input,
                            "system": new_system_prompt})


def chat_dataset(
    tokenizer,
    *,
    source: str,
    conversation_column: str | None = None,
    conversation_style: str = "auto",
    train_on_input: bool = False,
    new_system_prompt: str | None = None,
    packed: bool = False,
    split: str = "train",
    filter_fn: Callable | None = None,
    weight: float | None = None,
    num_proc: int | None = None,
    **load_dataset_kwargs,
):
    """Multi-turn conversations: ShareGPT rows ({"conversations": [{"from", "value"}]}) or
    OpenAI rows ({"messages": [{"role", "content"}]}).

    `conversation_column`: the column holding the turns (default: "conversations" or
    "messages", whichever exists). `conversation_style`: "sharegpt", "openai" or "auto"
    (decided per row from its keys). Every assistant turn is trained; user turns too with
    `train_on_input`. Other arguments as `alpaca_dataset`.
    """
    if conversation_style not in ("auto", "sharegpt", "openai"):
        raise DataError(f"dataset.conversation_style={conversation_style!r}; use sharegpt, openai or auto")

    def prepare(raw):
        column = conversation_column or next(
            (c for c in ("conversations", "messages") if c in raw.column_names), "conversations")

        def convert(row, index, name):
            turns = row.get(column)
            style = conversation_style
            if style == "auto":
                first = turns[0] if isinstance(turns, list) and turns and isinstance(turns[0], dict) else {}
                style = "sharegpt" if "from" in first else "openai"
            to_messages = sharegpt_to_messages if style == "sharegpt" else openai_to_messages
            try:
                messages = to_messages(turns, f"column {column!r}")
            except DataError as e:
                raise RowError(index, name, f", {e}") from None
            return with_masks(add_system_prompt(messages, new_system_prompt), train_on_input)

        return convert, [column]

    return _build(tokenizer, "chat", source, split, load_dataset_kwargs, filter_fn, prepare,
                  packed=packed, weight=weight, num_proc=num_proc,
                  settings={"column": conversation_column, "style": conversation_style,
                            "train_on_input": train_on_input, "system": new_system_prompt})


def text_completion_dataset(
    tokenizer,
    *,
    source: str,
    column: str = "text",
    add_eos: bool = True,
    packed: bool = False,
    split: str = "train",
    filter_fn: Callable | None = None,
    weight: float | None = None,
    num_proc: int | None = None,
    **load_dataset_kwargs,
):
    """Plain text for continued pre-training: every token of `column` is trained.

    Each row is BOS + text (+ EOS with `add_eos`); empty rows are skipped and counted.
    Other arguments as `alpaca_dataset`.
    """
    def convert(row, index, name):
        return _text(row, column, index, name)

    return _build(tokenizer, "text", source, split, load_dataset_kwargs, filter_fn,
                  lambda raw: (convert, [column]), packed=packed, weight=weight, num_proc=num_proc,
                  settings={"column": column}, add_eos=add_eos)


# -- shared ----------------------------------------------------------------------------------


def _columns(column_map, fields) -> dict[str, str]:
    column_map = dict(column_map or {})
    unknown = set(column_map) - set(fields)
    if unknown:
        raise DataError(f"dataset.column_map has unknown field(s) {', '.join(sorted(unknown))}; "
                        f"the fields are {', '.join(fields)} (map each to one of your columns)")
    return {f: column_map.get(f, f) for f in fields}


def _text(row: dict, column: str, index: int, name: str, required: bool = True) -> str:
    value = row.get(column)
    if value is None:
        if not required:
            return ""
        raise RowError(index, name, f" has no value for field {column!r}; fix the row or "
                       "drop such rows with dataset.filter_fn")
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise RowError(index, name, f": field {column!r} is a {type(value).__name__}, expected text")


def _first_prompt(raw, convert, dataset, name: str) -> str | None:
    """The user's last message in the first row trained on (None for plain text), so a run can
    end by suggesting a prompt its model has learned to answer."""
    index = dataset.source_index(0)
    converted = convert(raw[index], index, name)
    if not isinstance(converted, list):
        return None
    users = [m.content for m in converted if m.role == "user" and isinstance(m.content, str)]
    return users[-1] if users else None


def _as_in_file(convert, rows: RowNames):
    """`convert(row, index, name)`, retried on the row as its JSON Lines file holds it when it fails.

    datasets reads a field whose type varies between rows (text here, a number there) as JSON
    texts, and then turns a string that looks like JSON ("7", "true", "null") into a number, a
    bool or None: the text "7" would be refused as a number, and the row blamed would be the
    wrong one. The file says what the row really holds.
    """

    def convert_row(row: dict, index: int, name: str):
        try:
            return convert(row, index, name)
        except RowError:
            original = rows.as_in_file(index)
            if original is None or original == row:
                raise
            return convert(original, index, name)

    return convert_row


def _build(tokenizer, kind, source, split, load_kwargs, filter_fn, prepare, *, packed, weight,
           num_proc, settings, add_eos=False):
    """Load, check columns, filter, tokenize, report, and pack if asked.

    `prepare(raw)` returns (convert(row, index, name) -> messages or text, the columns every
    row needs); it sees the raw dataset so a builder can pick a column by what exists.
    """
    if weight is not None and not weight > 0:
        raise DataError(f"dataset.weight={weight}; use a positive number")
    if packed and tokenizer.max_seq_len is None:
        raise DataError("dataset.packed=True needs a pack length: set tokenizer.max_seq_len")
    name = describe_source(source, load_kwargs.get("data_files"), split)
    raw = load_source(source, split=split, **load_kwargs)
    convert, columns = prepare(raw)
    missing = [c for c in columns if c not in raw.column_names]
    if missing:
        raise DataError(
            f"dataset {name}: no column {missing[0]!r} (its columns: {', '.join(raw.column_names)}); "
            f"map one with dataset.column_map, e.g. dataset.column_map.{missing[0]}=<column>"
        )
    if filter_fn is not None:
        raw = raw.filter(filter_fn, desc=f"Filtering {name}")
    rows = RowNames(source, load_kwargs.get("data_files"), name, split,
                    line_per_row=filter_fn is None and load_kwargs.get("sample_by", "line") == "line")
    convert = _as_in_file(convert, rows)
    dataset = tokenize_dataset(
        tokenizer, raw, name=name, convert=lambda row, index: convert(row, index, name),
        settings={"kind": kind, **settings}, add_eos=add_eos, num_proc=num_proc, rows=rows,
    )
    dataset.weight = weight
    dataset.example_prompt = _first_prompt(raw, convert, dataset, name)
    dataset.summary.log()
    if packed:
        from tunelib.data.packing import PackedDataset

        dataset = PackedDataset(dataset, tokenizer.max_seq_len)
    return dataset
