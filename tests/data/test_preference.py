"""Preference data: pairs of answers to one prompt, only the answers trained, batched side by side."""

from __future__ import annotations

import inspect
import logging

import pytest
import torch

from support.data import write_rows

import tunelib.data as D
import tunelib.tokenizers as T
from tunelib.errors import DataError

Q, A, B = "What is the capital of France?", "Paris.", "London, I think."


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


def trained_text(pair, side, tokenizer) -> str:
    """The text the model learns to produce on one side: token j when labels[j - 1] is it."""
    tokens, labels = pair[f"{side}_tokens"], pair[f"{side}_labels"]
    return tokenizer.decode([tokens[j] for j in range(1, len(tokens)) if labels[j - 1] != -100])


def prompt_length(pair, side) -> int:
    """Tokens before the first trained one."""
    return next(j for j in range(1, len(pair[f"{side}_tokens"])) if pair[f"{side}_labels"][j - 1] != -100)


def build(tokenizer, tmp_path, rows, name="pairs.jsonl", **kwargs):
    return D.preference_dataset(tokenizer, source="json", data_files=str(write_rows(tmp_path / name, rows)), **kwargs)


def plain_tokenizer(tokenizer_folders, max_seq_len):
    return T.from_pretrained(tokenizer_folders("llama3").folder, max_seq_len=max_seq_len, chat_format="plain")


# -- the three row shapes ------------------------------------------------------------------------


def test_message_lists_share_their_common_prefix_as_the_prompt(llama3, tmp_path):
    history = [{"role": "system", "content": "Be brief."}, user("Hi."), bot("Hello."), user(Q)]
    ds = build(llama3, tmp_path, [{"chosen": history + [bot(A)], "rejected": history + [bot(B)]}])
    pair = ds[0]
    # Only the last answers train: the earlier assistant turn is part of the shared prompt.
    assert trained_text(pair, "chosen", llama3) == A + "<|eot_id|>"
    assert trained_text(pair, "rejected", llama3) == B + "<|eot_id|>"
    n = prompt_length(pair, "chosen")
    assert n == prompt_length(pair, "rejected")
    assert pair["chosen_tokens"][:n] == pair["rejected_tokens"][:n]
    prompt = llama3.decode(pair["chosen_tokens"][:n])
    assert "Be brief." in prompt and "Hello.<|eot_id|>" in prompt and prompt.endswith("assistant<|end_header_id|>\n\n")
    assert ds.example_prompt == Q


def test_prompt_and_text_answers_and_a_prompt_given_as_messages(plain, tmp_path):
    rows = [{"prompt": Q, "chosen": A, "rejected": B},
            {"prompt": [user("Name a colour.")], "chosen": [bot("Red.")], "rejected": [bot("Seven.")]}]
    ds = build(plain, tmp_path, rows)
    eos = plain.decode([plain.eos_id])
    assert [trained_text(ds[i], "chosen", plain) for i in range(2)] == [A + eos, "Red." + eos]
    assert [trained_text(ds[i], "rejected", plain) for i in range(2)] == [B + eos, "Seven." + eos]
    assert plain.decode(ds[0]["rejected_tokens"]) == "<|begin_of_text|>" + Q + B + eos


def test_a_prompt_column_beside_full_conversations_is_not_repeated(plain, tmp_path):
    # UltraFeedback-binarized: "prompt" is there, and chosen/rejected already start with it.
    ds = build(plain, tmp_path, [{"prompt": Q, "chosen": [user(Q), bot(A)], "rejected": [user(Q), bot(B)]}])
    assert plain.decode(ds[0]["chosen_tokens"]).count(Q) == 1


def test_stack_exchange_columns_are_read_with_j_chosen(plain, tmp_path):
    rows = [{"question": Q, "response_j": A, "response_k": B}]
    eos = plain.decode([plain.eos_id])
    for ds in (build(plain, tmp_path, rows),  # recognised by its columns
               D.stack_exchange_paired_dataset(plain, source="json",
                                               data_files=str(write_rows(tmp_path / "se.jsonl", rows)))):
        assert trained_text(ds[0], "chosen", plain) == A + eos
        assert trained_text(ds[0], "rejected", plain) == B + eos


def test_column_map_and_new_system_prompt(llama3, tmp_path):
    rows = [{"q": Q, "good": A, "bad": B}]
    ds = build(llama3, tmp_path, rows, column_map={"prompt": "q", "chosen": "good", "rejected": "bad"},
               new_system_prompt="Answer in one word.")
    assert trained_text(ds[0], "chosen", llama3) == A + "<|eot_id|>"
    text = llama3.decode(ds[0]["rejected_tokens"])
    assert text.index("\n\nAnswer in one word.<|eot_id|>") < text.index("user<|end_header_id|>")
    with pytest.raises(DataError, match="unknown field.*answer.*fields are prompt, chosen, rejected"):
        build(llama3, tmp_path, rows, column_map={"answer": "good"})


def test_torchtune_builders_default_to_their_hub_datasets(plain):
    sign = inspect.signature
    assert sign(D.stack_exchange_paired_dataset).parameters["source"].default == "lvwerra/stack-exchange-paired"
    assert sign(D.hh_rlhf_helpful_dataset).parameters["source"].default == "RLHFlow/HH-RLHF-Helpful-standard"
    for builder in (D.stack_exchange_paired_dataset, D.hh_rlhf_helpful_dataset, D.preference_dataset):
        assert sign(builder).parameters["train_on_input"].default is False
    with pytest.raises(DataError, match="lvwerra/stack-exchange-paired could not be downloaded.*source=json"):
        D.stack_exchange_paired_dataset(plain)
    with pytest.raises(DataError, match="RLHFlow/HH-RLHF-Helpful-standard could not be downloaded"):
        D.hh_rlhf_helpful_dataset(plain)


def test_hh_rlhf_helpful_reads_chosen_and_rejected_conversations(plain, tmp_path):
    rows = [{"chosen": [user(Q), bot(A)], "rejected": [user(Q), bot(B)]}]
    ds = D.hh_rlhf_helpful_dataset(plain, source="json", data_files=str(write_rows(tmp_path / "hh.jsonl", rows)))
    assert trained_text(ds[0], "rejected", plain) == B + plain.decode([plain.eos_id])
    sharegpt = [{"chosen": [{"from": "human", "value": Q}, {"from": "gpt", "value": A}],
                 "rejected": [{"from": "human", "value": Q}, {"from": "gpt", "value": B}]}]
    assert build(plain, tmp_path, sharegpt, name="sharegpt.jsonl")[0] == ds[0]


def test_torchtune_dataset_names_translate():
    from tunelib.config import torchtune_names

    for name in ("preference_dataset", "stack_exchange_paired_dataset", "hh_rlhf_helpful_dataset"):
        node = torchtune_names.translate_node({"_component_": f"torchtune.datasets.{name}", "split": "train"})
        assert node == {"_component_": f"tunelib.data.{name}", "split": "train"}


# -- chat formats --------------------------------------------------------------------------------


def test_a_chatml_format_trains_the_answer_and_its_end_of_turn(tokenizer_folders, tmp_path):
    qwen = T.from_pretrained(tokenizer_folders("qwen2_5").folder, max_seq_len=256)
    ds = build(qwen, tmp_path, [{"prompt": Q, "chosen": A, "rejected": B}])
    assert trained_text(ds[0], "chosen", qwen) == A + "<|im_end|>"
    n = prompt_length(ds[0], "rejected")
    prompt = qwen.decode(ds[0]["rejected_tokens"][:n])
    assert prompt.endswith(f"<|im_start|>user\n{Q}<|im_end|>\n<|im_start|>assistant\n")


# -- rows that teach nothing, and rows that are wrong ---------------------------------------------


def test_empty_missing_and_identical_pairs_are_skipped_and_counted(plain, tmp_path, caplog):
    rows = [{"prompt": Q, "chosen": A, "rejected": B},
            {"prompt": Q, "chosen": A, "rejected": A},           # line 2: nothing to prefer
            {"prompt": Q, "chosen": "", "rejected": B},          # empty answer
            {"prompt": Q, "chosen": A, "rejected": None},        # missing answer
            {"prompt": "", "chosen": A, "rejected": B},          # empty prompt
            {"prompt": Q, "chosen": "  ", "rejected": B}]        # blank answer
    with caplog.at_level(logging.INFO, logger="tunelib.data"):
        ds = build(plain, tmp_path, rows)
    assert len(ds) == 1 and ds.source_index(0) == 0
    assert (ds.summary.rows, ds.summary.kept, ds.summary.skipped, ds.same) == (6, 1, 5, 1)
    assert "1 rows kept, 5 skipped (nothing to train on)" in caplog.text
    assert f"1 of the skipped rows have the same chosen and rejected answer (the first: line 2 of {tmp_path}" \
        in caplog.text
    conversations = [{"chosen": [user(Q), bot(A)], "rejected": [user(Q), bot(A)]},
                     {"chosen": [user(Q), bot(A)], "rejected": [user(Q), bot(B)]}]
    assert build(plain, tmp_path, conversations, name="c.jsonl").same == 1


def test_a_dataset_with_no_usable_pair_is_refused(plain, tmp_path):
    with pytest.raises(DataError, match="none of its 1 rows is a pair to train on"):
        build(plain, tmp_path, [{"prompt": Q, "chosen": A, "rejected": A}])


def test_conversations_that_differ_before_the_answer_name_the_row(plain, tmp_path):
    rows = [{"chosen": [user(Q), bot(A)], "rejected": [user(Q), bot(B)]},
            {"chosen": [user(Q), bot(A)], "rejected": [user("Another question?"), bot(B)]}]
    with pytest.raises(DataError, match=r"line 2 of .*first differ at message 0, a user message"):
        build(plain, tmp_path, rows)


def test_missing_columns_and_answers_without_a_prompt(plain, tmp_path):
    with pytest.raises(DataError, match="no column 'rejected'.*column_map"):
        build(plain, tmp_path, [{"chosen": A, "other": B}])
    with pytest.raises(DataError, match="line 1 of .*no column 'prompt'; map one with dataset.column_map.prompt"):
        build(plain, tmp_path, [{"chosen": A, "rejected": B}], name="noprompt.jsonl")


def test_settings_pairs_cannot_honour_are_refused(plain, tmp_path, tokenizer_folders):
    path = str(write_rows(tmp_path / "p.jsonl", [{"prompt": Q, "chosen": A, "rejected": B}]))
    with pytest.raises(DataError, match="packed=True: preference pairs cannot be packed"):
        D.preference_dataset(plain, source="json", data_files=path, packed=True)
    with pytest.raises(DataError, match="train_on_input=True: preference data trains only the answers"):
        D.preference_dataset(plain, source="json", data_files=path, train_on_input=True)
    left = T.from_pretrained(tokenizer_folders("llama3").folder, max_seq_len=64, truncation_type="left")
    with pytest.raises(DataError, match="truncation_type='left'"):
        D.preference_dataset(left, source="json", data_files=path)
    ds = D.preference_dataset(plain, source="json", data_files=path)
    with pytest.raises(DataError, match="packed=True: .*preference pairs.*cannot be packed"):
        D.build_loader(ds, batch_size=1, packed=True, max_seq_len=256)


# -- truncation ----------------------------------------------------------------------------------

LONG_Q = "Tell me everything about " + " and ".join(f"topic {i}" for i in range(12)) + "."
LONG_A = " ".join(f"Fact {i} is true." for i in range(10))
LONG_B = " ".join(f"Claim {i} is false." for i in range(10))


def test_truncation_keeps_the_prompt_and_cuts_the_answers(tokenizer_folders, tmp_path):
    rows = [{"prompt": LONG_Q, "chosen": LONG_A, "rejected": LONG_B}]
    whole = build(plain_tokenizer(tokenizer_folders, None), tmp_path, rows)[0]
    n = prompt_length(whole, "chosen")
    limit = n + 3
    ds = build(plain_tokenizer(tokenizer_folders, limit), tmp_path, rows, name="cut.jsonl")
    assert ds.summary.truncated == 1
    for side in ("chosen", "rejected"):
        assert ds[0][f"{side}_tokens"] == whole[f"{side}_tokens"][:limit]  # the prompt whole, 3 answer tokens
        assert sum(label != -100 for label in ds[0][f"{side}_labels"]) == 3


def test_a_prompt_too_long_to_fit_loses_its_start_and_one_answer_token_trains(tokenizer_folders, tmp_path):
    rows = [{"prompt": LONG_Q, "chosen": LONG_A, "rejected": LONG_B}]
    untruncated = plain_tokenizer(tokenizer_folders, None)
    whole = build(untruncated, tmp_path, rows)[0]
    n = prompt_length(whole, "chosen")
    limit = n - 4
    pair = build(plain_tokenizer(tokenizer_folders, limit), tmp_path, rows, name="cut.jsonl")[0]
    for side in ("chosen", "rejected"):
        full = whole[f"{side}_tokens"]
        assert full[0] == untruncated.bos_id
        expected = full[:1] + full[n - (limit - 2):n] + full[n:n + 1]  # BOS, the prompt's end, one answer token
        assert pair[f"{side}_tokens"] == expected and len(expected) == limit
        assert trained_text(pair, side, untruncated) == untruncated.decode(full[n:n + 1])


def test_the_cut_keeps_a_leading_bos_only_when_there_is_one():
    from tunelib.data.pairs import fit

    ids, mask = [1, 10, 11, 12, 13, 20, 21], [True] * 5 + [False] * 2  # BOS, 4 prompt tokens, 2 answer tokens
    assert fit(ids, mask, 6, bos_id=1)[0] == [1, 10, 11, 12, 13, 20]  # the prompt fits: the answer is cut
    assert fit(ids, mask, 4, bos_id=1)[0] == [1, 12, 13, 20]
    assert fit(ids[1:], mask[1:], 4, bos_id=1)[0] == [11, 12, 13, 20]  # no BOS to keep
    assert fit(ids, mask, 7, bos_id=1) == (ids, mask, False)


def test_answers_equal_up_to_the_limit_are_cut_away(tokenizer_folders, tmp_path, caplog):
    rows = [{"prompt": Q, "chosen": LONG_A, "rejected": LONG_A + " But not this."},
            {"prompt": Q, "chosen": A, "rejected": B}]
    whole = build(plain_tokenizer(tokenizer_folders, None), tmp_path, rows)
    limit = prompt_length(whole[0], "chosen") + 5
    with caplog.at_level(logging.INFO, logger="tunelib.data"):
        ds = build(plain_tokenizer(tokenizer_folders, limit), tmp_path, rows, name="cut.jsonl")
    assert (len(ds), ds.summary.skipped, ds.summary.cut_away) == (1, 1, 1)
    assert f"1 of them only after truncation to {limit} tokens" in caplog.text


# -- batches -------------------------------------------------------------------------------------


def pair_rows(n: int) -> list[dict]:
    return [{"prompt": f"Count to {i % 5 + 1}.", "chosen": " ".join(str(k) for k in range(1, i % 5 + 2)),
             "rejected": "I cannot count" + "." * (i + 1)} for i in range(n)]


def test_a_batch_of_pairs_is_chosen_rows_then_rejected_rows(plain, tmp_path):
    ds = build(plain, tmp_path, pair_rows(6))
    loader = D.build_loader(ds, batch_size=3, shuffle=False, pad_id=plain.pad_id, pad_to_multiple_of=8)
    batch = next(iter(loader))
    pairs = [ds[i] for i in range(3)]
    sides = [(p["chosen_tokens"], p["chosen_labels"]) for p in pairs] + \
            [(p["rejected_tokens"], p["rejected_labels"]) for p in pairs]
    longest = max(len(t) for t, _ in sides)
    assert batch["input_ids"].shape == batch["labels"].shape == (6, -(-longest // 8) * 8)
    assert batch["input_ids"].dtype == batch["labels"].dtype == torch.int64
    for row, (tokens, labels) in enumerate(sides):
        n = len(tokens)
        assert batch["input_ids"][row, :n].tolist() == tokens and batch["labels"][row, :n].tolist() == labels
        assert (batch["input_ids"][row, n:] == plain.pad_id).all() and (batch["labels"][row, n:] == -100).all()
    assert (batch["position_ids"] == torch.arange(batch["input_ids"].shape[1])).all()
    assert batch["num_tokens"].item() == sum(len(t) for t, _ in sides)


def test_resuming_a_loader_of_pairs_gives_the_next_batch(plain, tmp_path):
    ds = build(plain, tmp_path, pair_rows(8))
    loader = D.build_loader(ds, batch_size=2, seed=3, pad_id=plain.pad_id)
    batches = iter(loader)
    next(batches)
    state = loader.state_dict()
    expected = next(batches)
    resumed = D.build_loader(ds, batch_size=2, seed=3, pad_id=plain.pad_id)
    resumed.load_state_dict(state)
    assert torch.equal(next(iter(resumed))["input_ids"], expected["input_ids"])


def test_pairs_combine_with_pairs_only(plain, tmp_path):
    pairs_a = build(plain, tmp_path, pair_rows(3), name="a.jsonl")
    pairs_b = build(plain, tmp_path, pair_rows(4), name="b.jsonl")
    sft = D.instruct_dataset(plain, source="json", data_files=str(write_rows(
        tmp_path / "sft.jsonl", [{"input": Q, "output": A}])))
    for mixed in ([pairs_a, sft], [sft, pairs_a]):
        with pytest.raises(DataError, match=r"mixes (preference pairs|SFT rows) .* and .*list one kind"):
            D.combine(mixed)
    both = D.combine([pairs_a, pairs_b])
    assert len(both) == 7 and both[3] == pairs_b[0]
    batch = next(iter(D.build_loader(both, batch_size=7, shuffle=False, pad_id=plain.pad_id)))
    assert batch["input_ids"].shape[0] == 14
    pairs_b.weight = 3.0
    assert D.combine([pairs_a, pairs_b]).collate is D.collate_pairs


def test_out_of_vocabulary_ids_are_found_in_pairs(plain, tmp_path):
    ds = build(plain, tmp_path, [{"prompt": Q, "chosen": A, "rejected": B}])
    with pytest.raises(DataError, match=r"line 1 of .* has token id \d+, but the model's vocabulary has 100 ids"):
        D.check_token_ids(ds, 100)
    D.check_token_ids(ds, plain.vocab_size)


# -- preview -------------------------------------------------------------------------------------


def test_preview_shows_both_sides_with_the_answers_marked(llama3, tmp_path):
    ds = build(llama3, tmp_path, [{"prompt": Q, "chosen": A, "rejected": B}])
    text = D.preview(ds, llama3, n=3)
    assert text.count("--- sample") == 1 and "preference pair" in text
    chosen, rejected = text.split("[chosen: ")[1].split("[rejected: ")
    assert f"«{A}<|eot_id|>»" in chosen and f"«{B}<|eot_id|>»" in rejected
    assert chosen.count("«") == rejected.count("«") == 1 and Q in chosen and Q in rejected
    pair = ds[0]
    trained = sum(label != -100 for label in pair["chosen_labels"])
    assert chosen.startswith(f"{len(pair['chosen_tokens'])} tokens, {trained} trained]")


def test_tune_preview_shows_a_config_s_pairs(tune, tmp_path):
    path = write_rows(tmp_path / "pairs.jsonl", [{"prompt": Q, "chosen": A, "rejected": B}])
    code, out, err = tune("preview", "demo/tiny_lora", "dataset._component_=tunelib.data.preference_dataset",
                          f"dataset.data_files={path}")
    assert code == 0, err
    assert f"«{A}<|im_end|>»" in out.split("[rejected: ")[0] and f"«{B}<|im_end|>»" in out.split("[rejected: ")[1]
