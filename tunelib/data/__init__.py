"""Data: datasets of tokens and labels, packing, and the resumable loader.

    tok = tunelib.tokenizers.from_pretrained(folder, max_seq_len=2048)
    data = tunelib.data.instruct_dataset(tok, source="json", data_files="train.jsonl",
                                         column_map={"input": "question", "output": "answer"})
    tunelib.data.check_token_ids(data, model.vocab_size)
    loader = tunelib.data.build_loader(data, batch_size=8, seed=0, packed=True)
    for batch in loader:  # input_ids, labels, position_ids (+ document_ids when packed)
        ...

See docs/data.md.
"""

from tunelib.data.builders import (
    alpaca_cleaned_dataset,
    alpaca_dataset,
    chat_dataset,
    instruct_dataset,
    text_completion_dataset,
)
from tunelib.data.checks import check_token_ids
from tunelib.data.collate import collate, collate_pairs
from tunelib.data.labels import IGNORE_INDEX, shift_labels
from tunelib.data.loader import Loader, build_loader
from tunelib.data.messages import Message, openai_to_messages, sharegpt_to_messages
from tunelib.data.mixing import ConcatDataset, MixedDataset, combine
from tunelib.data.packing import PackedDataset
from tunelib.data.pairs import PreferenceDataset
from tunelib.data.preference import (
    hh_rlhf_helpful_dataset,
    preference_dataset,
    stack_exchange_paired_dataset,
)
from tunelib.data.preview import preview
from tunelib.data.prompts import alpaca_prompt
from tunelib.data.summary import DataSummary
from tunelib.data.tokenized import TokenizedDataset

__all__ = [
    "IGNORE_INDEX", "ConcatDataset", "DataSummary", "Loader", "Message", "MixedDataset",
    "PackedDataset", "PreferenceDataset", "TokenizedDataset", "alpaca_cleaned_dataset", "alpaca_dataset",
    "alpaca_prompt", "build_loader", "chat_dataset", "check_token_ids", "collate", "collate_pairs", "combine",
    "hh_rlhf_helpful_dataset", "instruct_dataset", "openai_to_messages", "preference_dataset", "preview",
    "sharegpt_to_messages", "shift_labels", "stack_exchange_paired_dataset", "text_completion_dataset",
]
