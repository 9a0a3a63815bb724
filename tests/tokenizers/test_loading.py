"""from_pretrained finds the right tokenizer and reads its special tokens from the folder."""

from __future__ import annotations

import inspect
import json
import shutil

import pytest

import tunelib.tokenizers as T
from tunelib.errors import DataError

# One per tokenizer the family modules name (tunelib.families), each exported by the package.
BUILDERS = [getattr(T, name) for name in T.builders.BUILDERS]


def test_path_may_be_folder_or_file_inside_it(tokenizer_folders):
    info = tokenizer_folders("llama3")
    by_folder = T.from_pretrained(info.folder)
    by_file = T.from_pretrained(info.folder / "original" / "tokenizer.model")
    by_json = T.from_pretrained(info.folder / "tokenizer.json")
    assert type(by_folder.codec).__name__ == "HFCodec"  # a folder prefers tokenizer.json
    assert type(by_file.codec).__name__ == "TiktokenCodec"
    assert by_json.source == by_folder.source
    # Settings of original/tokenizer.model come from the model folder above it.
    assert by_file.chat_format == "jinja"
    for tok in (by_folder, by_file):
        assert (tok.bos_id, tok.eos_id, tok.pad_id) == (512, 521, 516)
        assert tok.stop_tokens == [513, 520, 521]  # end_of_text, eom, eot
        assert tok.vocab_size == 768


def test_llama3_special_tokens_count_from_the_base_vocabulary(tokenizer_folders, tmp_path):
    info = tokenizer_folders("llama3")
    (tmp_path / "tokenizer.model").write_bytes((info.folder / "original" / "tokenizer.model").read_bytes())
    tok = T.from_pretrained(tmp_path / "tokenizer.model")  # no configs at all: Meta's defaults
    specials = tok.special_tokens
    assert len(specials) == 256 and tok.vocab_size == 512 + 256
    expected = {"<|begin_of_text|>": 0, "<|end_of_text|>": 1, "<|finetune_right_pad_id|>": 4,
                "<|start_header_id|>": 6, "<|end_header_id|>": 7, "<|eom_id|>": 8,
                "<|eot_id|>": 9, "<|python_tag|>": 10, "<|reserved_special_token_247|>": 255}
    for name, offset in expected.items():
        assert specials[name] == 512 + offset, name
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (512, 513, 516)
    assert tok.stop_tokens == [513, 520, 521]
    assert tok.chat_format == "llama3"


def test_vocab_json_path_means_the_folder(tokenizer_folders):
    # torchtune's Qwen configs point at vocab.json and pass merges_file.
    info = tokenizer_folders("qwen2_5")
    tok = T.qwen2_5_tokenizer(info.folder / "vocab.json", merges_file=info.folder / "merges.txt")
    assert tok.source.endswith("tokenizer.json")
    assert tok.bos_id is None and not tok.adds_bos
    assert tok.encode("hi") == tok.encode("hi", add_bos=False)
    assert tok.eos_id == 514 and tok.pad_id == 512


@pytest.mark.parametrize("family,bos,eos", [
    ("llama2", "<s>", "</s>"), ("gemma", "<bos>", "<eos>"), ("phi4", None, "<|im_end|>"),
    ("qwen3", None, "<|im_end|>"), ("mistral", "<s>", "</s>"),
])
def test_encode_adds_bos_and_eos_as_the_family_does(tokenizer_folders, family, bos, eos):
    tok = T.from_pretrained(tokenizer_folders(family).folder)
    ids = tok.encode("Hello world")
    body = tok.encode("Hello world", add_bos=False, add_eos=False)
    expected = ([tok.special_tokens[bos]] if bos else []) + body + [tok.special_tokens[eos]]
    assert ids == expected


def test_truncation_right_and_left(tokenizer_folders):
    info = tokenizer_folders("llama3")
    messages = [{"role": "user", "content": "one two three four five six seven eight"},
                {"role": "assistant", "content": "nine ten eleven twelve"}]
    full, full_mask = T.from_pretrained(info.folder).tokenize_messages(messages)
    right = T.from_pretrained(info.folder, max_seq_len=10)
    left = T.from_pretrained(info.folder, max_seq_len=10, truncation_type="left")
    assert right.tokenize_messages(messages) == (full[:10], full_mask[:10])
    assert left.tokenize_messages(messages) == (full[-10:], full_mask[-10:])
    assert right.tokenize_messages(messages, truncate=False)[0] == full
    assert right.encode("a b c d e f g h i j k l", truncate=True) == \
        right.encode("a b c d e f g h i j k l")[:10]


def test_builders_take_the_same_keywords_as_from_pretrained(tokenizer_folders):
    reference = inspect.signature(T.from_pretrained)
    for builder in BUILDERS:
        assert inspect.signature(builder) == reference, builder.__name__
        assert builder.__doc__
    # A config can swap _component_ between families: the same folder, the same keys.
    info = tokenizer_folders("qwen2_5")
    for builder in BUILDERS:
        tok = builder(path=str(info.folder), max_seq_len=64, chat_format=None, truncation_type="left")
        assert tok.max_seq_len == 64


def test_family_builder_picks_the_builtin_format_without_a_template(tokenizer_folders):
    info = tokenizer_folders("llama2", template=None)
    assert T.llama2_tokenizer(info.folder).chat_format == "llama2"
    assert T.from_pretrained(info.folder).chat_format == "llama2"  # detected
    assert T.mistral_tokenizer(info.folder).chat_format == "mistral"
    assert T.from_pretrained(info.folder, chat_format="plain").chat_format == "plain"
    with pytest.raises(DataError, match="chat_format=jinja but .* has no chat_template"):
        T.from_pretrained(info.folder, chat_format="jinja")
    with pytest.raises(DataError, match="unknown chat_format 'chatgpt'"):
        T.from_pretrained(info.folder, chat_format="chatgpt")


@pytest.mark.parametrize("family", ["llama3", "qwen2", "qwen3", "gemma", "phi3", "phi4", "mistral"])
def test_family_is_detected_from_the_folder(tokenizer_folders, family):
    assert T.from_pretrained(tokenizer_folders(family).folder).family == family


def test_bad_paths_and_files_are_one_line_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist; set tokenizer.path") as e:
        T.from_pretrained(tmp_path / "nope")
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="no tokenizer in .*expected tokenizer.json"):
        T.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"\x00\x01garbage")
    with pytest.raises(DataError, match="neither a SentencePiece model nor a tiktoken file"):
        T.from_pretrained(tmp_path / "tokenizer.model")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(DataError, match="not a readable tokenizer.json"):
        T.from_pretrained(tmp_path)


def test_bad_settings_are_data_errors(tokenizer_folders, tmp_path):
    info = tokenizer_folders("qwen2")
    shutil.copytree(info.folder, tmp_path / "m")
    with pytest.raises(DataError, match="prompt_template is not supported"):
        T.from_pretrained(tmp_path / "m", prompt_template="torchtune.data.ChatMLTemplate")
    with pytest.raises(DataError, match="truncation_type='middle'"):
        T.from_pretrained(tmp_path / "m", truncation_type="middle")
    config = json.loads((tmp_path / "m" / "tokenizer_config.json").read_text())
    config["eos_token"] = "<|nope|>"
    (tmp_path / "m" / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match="eos_token '<\\|nope\\|>' is not in its vocabulary"):
        T.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "tokenizer_config.json").write_text("{")
    with pytest.raises(DataError, match="tokenizer_config.json is not valid JSON"):
        T.from_pretrained(tmp_path / "m")


def test_fingerprint_changes_with_what_decides_the_ids(tokenizer_folders):
    a = T.from_pretrained(tokenizer_folders("qwen2").folder)
    assert a.fingerprint == T.from_pretrained(tokenizer_folders("qwen2").folder).fingerprint
    assert a.fingerprint != T.from_pretrained(tokenizer_folders("qwen2").folder, max_seq_len=8).fingerprint
    assert a.fingerprint != T.from_pretrained(tokenizer_folders("qwen3").folder).fingerprint


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, tunelib.tokenizers; print([m for m in ('transformers', 'datasets') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("family,file", [("llama3", "original/tokenizer.model"), ("llama2", "tokenizer.model"),
                                         ("qwen2_5", "")])
def test_tokenizers_pickle_for_worker_processes(tokenizer_folders, family, file):
    # datasets.map(num_proc=N) sends the tokenizer to worker processes.
    import pickle

    info = tokenizer_folders(family)
    tok = T.from_pretrained(info.folder / file if file else info.folder, max_seq_len=64)
    copy = pickle.loads(pickle.dumps(tok))
    messages = [{"role": "user", "content": "Hi 你好"}, {"role": "assistant", "content": "Hello 😀"}]
    assert copy.tokenize_messages(messages) == tok.tokenize_messages(messages)
    assert copy.encode("x  y") == tok.encode("x  y")


@pytest.mark.parametrize("model_family,tokenizer_family", [("qwen2", "qwen2_5"), ("llama3", "llama3")])
def test_a_tiny_model_and_tokenizer_share_a_folder(tmp_path, model_family, tokenizer_family):
    # Recipe tests save a tiny model, then write the tokenizer beside it.
    from support.models import make_hf_model_folder
    from support.tokenizers import write_tokenizer
    from tunelib.checkpoint import from_pretrained as load_model

    folder = tmp_path / "model"
    make_hf_model_folder(folder, model_family, vocab_size=1024)
    config = (folder / "config.json").read_text()
    info = write_tokenizer(folder, tokenizer_family)
    assert (folder / "config.json").read_text() == config  # the model's config is untouched
    tok = T.from_pretrained(folder)
    assert tok.family == tokenizer_family and tok.vocab_size == info.vocab_size <= 1024
    assert tok.stop_tokens == sorted({tok.eos_id, *json.loads((folder / "generation_config.json").read_text())["eos_token_id"]})
    model = load_model(folder)
    ids = tok.encode("Hello there")
    assert model(__import__("torch").tensor([ids])).shape == (1, len(ids), 1024)
