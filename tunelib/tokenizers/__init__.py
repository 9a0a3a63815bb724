"""Tokenizers: SentencePiece, tiktoken and Hugging Face tokenizer.json, with chat formats.

    tok = tunelib.tokenizers.from_pretrained("/tmp/Meta-Llama-3.1-8B-Instruct", max_seq_len=2048)
    ids = tok.encode("Hello")                          # [bos, ..., eos]
    tokens, mask = tok.tokenize_messages(messages)      # mask[i] True: token i is not trained

See docs/data.md for the families, chat formats and special tokens.
"""

from tunelib.tokenizers.builders import BUILDERS
from tunelib.tokenizers.chat_formats import BUILTIN_FORMATS
from tunelib.tokenizers.loading import from_pretrained
from tunelib.tokenizers.tokenizer import Tokenizer

# One builder per family tokenizer (gemma_tokenizer, llama3_tokenizer, ...): see tunelib.families.
globals().update(BUILDERS)
__all__ = ["BUILTIN_FORMATS", "Tokenizer", "from_pretrained", *sorted(BUILDERS)]
