"""Streaming: text printed piece by piece equals the text decoded at once; Ctrl-C ends an answer."""

from __future__ import annotations

import pytest

from support.tokenizers import SAMPLE_TEXTS, write_tokenizer
from tunelib.generation import Generator, Sampling, TextStream, stream_reply


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    from tunelib.tokenizers import from_pretrained

    root = tmp_path_factory.mktemp("stream_tokenizers")
    # Byte-level BPE splits CJK and emoji over several tokens; SentencePiece drops a lone
    # word's leading space: the two ways token-by-token decoding goes wrong.
    return {family: from_pretrained(write_tokenizer(root / family, family).folder) for family in ("llama3", "llama2")}


@pytest.mark.parametrize("family", ["llama3", "llama2"])
def test_pieces_add_up_to_the_decoded_text(tokenizers, family):
    tokenizer = tokenizers[family]
    for text in SAMPLE_TEXTS:
        ids = tokenizer.encode(text, add_bos=False, add_eos=False)
        stream = TextStream(tokenizer)
        pieces = [stream.push(token) for token in ids] + [stream.flush()]
        assert "".join(pieces) == stream.text == tokenizer.decode(ids, skip_special_tokens=True)
        assert not any("\ufffd" in piece for piece in pieces), text  # no half characters printed
        if len(ids) > 3:
            assert sum(1 for piece in pieces if piece) > 1  # it really streams


def test_special_tokens_are_not_printed(tokenizers):
    tokenizer = tokenizers["llama3"]
    ids = tokenizer.encode("Hi there", add_bos=True, add_eos=True)
    stream = TextStream(tokenizer)
    assert "".join(stream.push(t) for t in ids) + stream.flush() == "Hi there"


class _Interrupted:
    """A generator that yields a few tokens, then gets Ctrl-C."""

    def __init__(self, tokens):
        self.tokens = tokens

    def budget(self, prompt_len, max_new_tokens):
        return max_new_tokens

    def stream(self, prompt, **kwargs):
        yield from self.tokens
        raise KeyboardInterrupt


def test_ctrl_c_ends_the_answer_and_keeps_what_was_written(tokenizers):
    tokenizer = tokenizers["llama3"]
    tokens = tokenizer.encode("Once upon a time", add_bos=False, add_eos=False)
    written = []
    reply = stream_reply(_Interrupted(tokens), tokenizer, [1, 2, 3], max_new_tokens=50, sampling=Sampling(),
                         rng=None, write=written.append)
    assert reply.stopped == "interrupted"
    assert reply.text == "".join(written) == "Once upon a time"


def test_a_reply_says_why_it_ended(tiny_models, tokenizers):
    model, tokenizer = tiny_models(), tokenizers["llama3"]
    gen = Generator(model, context=40)
    reply = stream_reply(gen, tokenizer, [5, 6, 7], max_new_tokens=4, sampling=Sampling(), rng=None,
                         write=lambda _: None)
    assert (len(reply.tokens), reply.stopped) == (4, "max_new_tokens")
    reply = stream_reply(gen, tokenizer, list(range(3, 33)), max_new_tokens=100, sampling=Sampling(), rng=None,
                         write=lambda _: None)
    assert (len(reply.tokens), reply.stopped) == (10, "context")
