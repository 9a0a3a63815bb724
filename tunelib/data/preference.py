"""Preference data builders: `dataset._component_=tunelib.data.preference_dataset`, ...

Each row is a prompt with two answers, chosen (preferred) and rejected, as DPO and its
relatives train on. Rows come in three shapes (docs/data.md, "Preference data"):

    {"chosen": [messages], "rejected": [messages]}     the prompt is the messages both share
    {"prompt": "...", "chosen": "...", "rejected": "..."}   prompt may be a message list too
    {"question": "...", "response_j": "...", "response_k": "..."}   stack-exchange-paired (j chosen)

Each builder takes the tokenizer first and returns a `PreferenceDataset` of pairs, whose
`collate` puts a batch's chosen rows first and its rejected rows after them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from tunelib.data.builders import _as_in_file, _columns
from tunelib.data.messages import Message, add_system_prompt, openai_to_messages, sharegpt_to_messages
from tunelib.data.pairs import SAME, SKIPPED, Pair, tokenize_pairs
from tunelib.data.rows import RowError, RowNames
from tunelib.data.sources import describe_source, load_source
from tunelib.errors import DataError

FIELDS = ("prompt", "chosen", "rejected")
STACK_EXCHANGE_COLUMNS = {"prompt": "question", "chosen": "response_j", "rejected": "response_k"}
STACK_EXCHANGE_SOURCE = "lvwerra/stack-exchange-paired"


def preference_dataset(
    tokenizer,
    *,
    source: str,
    data_files=None,
    split: str = "train",
    column_map: Mapping[str, str] | None = None,
    train_on_input: bool = False,
    new_system_prompt: str | None = None,
    packed: bool = False,
    filter_fn: Callable | None = None,
    weight: float | None = None,
    num_proc: int | None = None,
    **load_dataset_kwargs,
):
    """Pairs of answers to one prompt, chosen and rejected, from any of the three row shapes.

    `column_map` maps the fields "prompt", "chosen", "rejected" to the dataset's columns;
    without one, a dataset with question/response_j/response_k columns and no "chosen" is
    read as stack-exchange-paired. Chosen and rejected are each a text (the assistant's
    answer) or a message list (ShareGPT or OpenAI turns). Lists that start with the prompt
    share it as their common prefix, and the answers are what follows; lists that start with
    the answer (and texts) take the prompt from the "prompt" field, a text (one user message)
    or a message list. The tokenizer's chat format applies; only the answers are trained.
    Each side is cut to `tokenizer.max_seq_len` keeping the prompt (docs/data.md).
    Rows with an empty or missing prompt or answer, or with chosen equal to rejected, are
    skipped and counted. `new_system_prompt` adds (or replaces) a system message. `filter_fn`,
    `weight`, `num_proc` and extra `datasets.load_dataset` keywords as `chat_dataset`.

    Raises DataError for `train_on_input=True` or `packed=True` (pairs are not packed), a
    missing column, or a row that cannot be read (naming the row and field).
    """
    if train_on_input:
        raise DataError("dataset.train_on_input=True: preference data trains only the answers (the "
                        "objective compares them given the same prompt); remove train_on_input")
    if packed:
        raise DataError("dataset.packed=True: preference pairs cannot be packed (a pair's two sides go "
                        "through the model side by side); remove packed")
    if getattr(tokenizer, "truncation_type", "right") != "right":
        raise DataError(f"tokenizer.truncation_type={tokenizer.truncation_type!r}: preference data always "
                        "keeps the prompt and cuts the answers' ends; remove truncation_type")
    if weight is not None and not weight > 0:
        raise DataError(f"dataset.weight={weight}; use a positive number")
    if data_files is not None:
        load_dataset_kwargs["data_files"] = data_files
    name = describe_source(source, data_files, split)
    raw = load_source(source, split=split, **load_dataset_kwargs)
    fields = _fields(column_map, raw.column_names)
    missing = [fields[f] for f in ("chosen", "rejected") if fields[f] not in raw.column_names]
    if missing:
        raise DataError(
            f"dataset {name}: no column {missing[0]!r} (its columns: {', '.join(raw.column_names)}); "
            f"map one with dataset.column_map, e.g. dataset.column_map.chosen=<column>")
    if filter_fn is not None:
        raw = raw.filter(filter_fn, desc=f"Filtering {name}")
    rows = RowNames(source, data_files, name, split,
                    line_per_row=filter_fn is None and load_dataset_kwargs.get("sample_by", "line") == "line")
    convert = _as_in_file(_converter(fields, new_system_prompt, has_prompt=fields["prompt"] in raw.column_names),
                          rows)
    dataset = tokenize_pairs(tokenizer, raw, name=name, convert=lambda row, index: convert(row, index, name),
                             settings={"kind": "preference", "columns": fields, "system": new_system_prompt},
                             num_proc=num_proc, rows=rows)
    dataset.weight = weight
    dataset.example_prompt = _example_prompt(raw, convert, dataset, name)
    dataset.log_summary()
    return dataset


def stack_exchange_paired_dataset(
    tokenizer,
    *,
    source: str = STACK_EXCHANGE_SOURCE,
    column_map: Mapping[str, str] | None = None,
    train_on_input: bool = False,
    filter_fn: Callable | None = None,
    split: str = "train",
    **kwargs,
):
    """Stack Exchange questions with a better and a worse answer (lvwerra/stack-exchange-paired,
    torchtune's default): columns question, response_j (chosen), response_k (rejected).

    `column_map` changes some of those three (the others keep these names). On the Hub dataset
    the default `data_dir` is "data/rl", its preference split, as in torchtune. Other arguments
    as `preference_dataset`.
    """
    if source == STACK_EXCHANGE_SOURCE and "data_files" not in kwargs:
        kwargs.setdefault("data_dir", "data/rl")
    return preference_dataset(tokenizer, source=source, column_map={**STACK_EXCHANGE_COLUMNS, **(column_map or {})},
                              train_on_input=train_on_input, filter_fn=filter_fn, split=split, **kwargs)


def hh_rlhf_helpful_dataset(
    tokenizer,
    *,
    source: str = "RLHFlow/HH-RLHF-Helpful-standard",
    column_map: Mapping[str, str] | None = None,
    train_on_input: bool = False,
    new_system_prompt: str | None = None,
    filter_fn: Callable | None = None,
    split: str = "train",
    **kwargs,
):
    """Anthropic's helpful-assistant comparisons (RLHFlow/HH-RLHF-Helpful-standard, torchtune's
    default): chosen and rejected conversations that share their prompt. Arguments as
    `preference_dataset`."""
    return preference_dataset(tokenizer, source=source, column_map=column_map, train_on_input=train_on_input,
                              new_system_prompt=new_system_prompt, filter_fn=filter_fn, split=split, **kwargs)


# -- rows to pairs ------------------------------------------------------------------------------


def _fields(column_map, columns: list[str]) -> dict[str, str]:
    """The column of each field; stack-exchange-paired's names when nothing else fits."""
    if column_map is None and "chosen" not in columns and set(STACK_EXCHANGE_COLUMNS.values()) <= set(columns):
        return dict(STACK_EXCHANGE_COLUMNS)
    return _columns(column_map, FIELDS)


def _converter(fields: dict[str, str], system: str | None, has_prompt: bool):
    """convert(row, index, name) -> a Pair, or SKIPPED / SAME for a row with nothing to learn."""

    def convert(row: dict, index: int, name: str) -> Pair | int:
        chosen = _side(row, fields["chosen"], index, name)
        rejected = _side(row, fields["rejected"], index, name)
        if chosen is None or rejected is None:
            return SKIPPED
        if _carries_prompt(chosen) != _carries_prompt(rejected):
            raise RowError(index, name, f": one of {fields['chosen']!r} and {fields['rejected']!r} starts with "
                           "the prompt and the other with the answer; give both the same way")
        if _carries_prompt(chosen):
            if _same(chosen, rejected):
                return SAME
            prompt, chosen, rejected = _split_prefix(chosen, rejected, fields, index, name)
        elif not has_prompt:
            raise RowError(index, name, f": {fields['chosen']!r} and {fields['rejected']!r} are answers without "
                           f"their prompt, and there is no column {fields['prompt']!r}; map one with "
                           "dataset.column_map.prompt=<column>")
        else:
            prompt = _side(row, fields["prompt"], index, name, role="user")
        if prompt is None or not (_has_text(prompt) and _answers(chosen) and _answers(rejected)):
            return SKIPPED
        if _same(chosen, rejected):
            return SAME
        return Pair(add_system_prompt(prompt, system), chosen, rejected)

    return convert


def _side(row: dict, column: str, index: int, name: str, role: str = "assistant") -> list[Message] | None:
    """A field as messages: a text is one `role` message; None for a missing or empty value."""
    value = row.get(column)
    if value is None or (isinstance(value, (str, list)) and not value):
        return None
    if isinstance(value, str):
        return [Message(role, value)]
    if isinstance(value, list):
        first = value[0] if isinstance(value[0], dict) else {}
        to_messages = sharegpt_to_messages if "from" in first else openai_to_messages
        try:
            return to_messages(value, f"column {column!r}")
        except DataError as e:
            raise RowError(index, name, f", {e}") from None
    raise RowError(index, name, f": field {column!r} is a {type(value).__name__}, expected text or a "
                   "list of messages")


def _carries_prompt(messages: list[Message]) -> bool:
    """Whether a side's message list starts with its prompt (not with the answer)."""
    return messages[0].role != "assistant"


def _split_prefix(chosen: list[Message], rejected: list[Message], fields, index: int, name: str):
    """(prompt, chosen answer, rejected answer): the prompt is the messages both sides start with."""
    k = 0
    while k < min(len(chosen), len(rejected)) and _key(chosen[k]) == _key(rejected[k]):
        k += 1
    differs = [m.role for m in (chosen[k:k + 1] + rejected[k:k + 1]) if m.role != "assistant"]
    if differs:
        raise RowError(index, name, f": {fields['chosen']!r} and {fields['rejected']!r} first differ at message "
                       f"{k}, a {differs[0]} message; the two conversations must be the same up to the answers "
                       "(the assistant messages that follow)")
    return chosen[:k], chosen[k:], rejected[k:]


def _key(message: Message) -> tuple[str, str]:
    return message.role, message.content


def _has_text(messages: list[Message]) -> bool:
    return any(m.content.strip() for m in messages)


def _answers(messages: list[Message]) -> bool:
    """Whether a side has an answer to train: an assistant message with text."""
    return any(m.role == "assistant" and m.content.strip() for m in messages)


def _same(chosen: list[Message], rejected: list[Message]) -> bool:
    return [_key(m) for m in chosen] == [_key(m) for m in rejected]


def _example_prompt(raw, convert, dataset, name: str) -> str | None:
    """The last user message of the first pair trained on, for the run's closing suggestion."""
    index = dataset.source_index(0)
    pair = convert(raw[index], index, name)
    users = [m.content for m in pair.prompt if m.role == "user"] if isinstance(pair, Pair) else []
    return users[-1] if users else None
