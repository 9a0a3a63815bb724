"""Conversations become exactly the ids of each family's official chat template, and only
the answers (and their end-of-turn token) are trained."""

from __future__ import annotations

import json

import pytest

import tunelib.tokenizers as T
from tunelib.errors import DataError

transformers = pytest.importorskip("transformers")
jinja2 = pytest.importorskip("jinja2")

CONVERSATIONS = {
    "one_turn": [
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "Hi! 42"},
    ],
    "multi_turn": [
        {"role": "user", "content": "  What is 7 x 6?  "},
        {"role": "assistant", "content": "  It is 42.  "},
        {"role": "user", "content": "你好 😀 and code?"},
        {"role": "assistant", "content": "def f(x):\n    return x  +  1"},
    ],
    "system": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "Hi!\n\nBye."},
    ],
}

# (family, template file in tests/assets/chat_templates)
TEMPLATES = [
    ("llama2", "llama2"), ("llama3", "llama3"), ("llama3", "llama3_1"), ("qwen2", "qwen2"),
    ("qwen2_5", "qwen2_5"), ("qwen3", "qwen3"), ("mistral", "mixtral"),
    ("mistral", "mistral_v0_1"), ("mistral", "mistral_nemo"), ("gemma", "gemma"), ("gemma", "gemma3"),
    ("phi3", "phi3"), ("phi4", "phi4"),
]

# Built-in format -> the official template it reproduces.
BUILTINS = [
    ("llama2", "llama2"), ("llama3", "llama3"), ("qwen2", "qwen2"), ("qwen2_5", "qwen2_5"),
    ("qwen3", "qwen3"), ("mistral", "mixtral"), ("gemma", "gemma"), ("gemma", "gemma3"), ("phi3", "phi3"),
    ("phi4", "phi4"),
]


def _hf_ids(info, messages, **kw):
    hf = transformers.AutoTokenizer.from_pretrained(info.folder)
    return hf.apply_chat_template(messages, tokenize=True, **kw)["input_ids"]


def _trained_runs(ids, mask):
    runs, run = [], []
    for i, m in zip(ids, mask):
        if not m:
            run.append(i)
        elif run:
            runs.append(run)
            run = []
    return runs + ([run] if run else [])


@pytest.mark.parametrize("family,template", TEMPLATES)
@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_jinja_template_ids_match_apply_chat_template(tokenizer_folders, family, template, conversation):
    info = tokenizer_folders(family, template=template)
    messages = CONVERSATIONS[conversation]
    tok = T.from_pretrained(info.folder)
    assert tok.chat_format == "jinja"
    try:
        expected = _hf_ids(info, messages)
    except jinja2.TemplateError:  # e.g. Gemma and Mixtral have no system role
        with pytest.raises(DataError, match="chat template rejected"):
            tok.tokenize_messages(messages)
        return
    ids, mask = tok.tokenize_messages(messages)
    assert ids == expected
    # Exactly the answers are trained, each followed by its end-of-turn token.
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    runs = _trained_runs(ids, mask)
    assert len(runs) == len(answers)
    for run, answer in zip(runs, answers):
        assert tok.decode(run[:-1]).strip() == answer.strip()
        assert run[-1] in tok.stop_tokens


@pytest.mark.parametrize("fmt,template", BUILTINS)
@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_builtin_formats_reproduce_the_official_templates(tokenizer_folders, fmt, template, conversation):
    info = tokenizer_folders(fmt, template=template)
    messages = CONVERSATIONS[conversation]
    try:
        expected = _hf_ids(info, messages)
    except jinja2.TemplateError:
        pytest.skip("the official template rejects this conversation")
    builtin = T.from_pretrained(info.folder, chat_format=fmt)
    assert builtin.chat_format == fmt
    ids, mask = builtin.tokenize_messages(messages)
    assert ids == expected
    assert mask == T.from_pretrained(info.folder).tokenize_messages(messages)[1]


@pytest.mark.parametrize("family,file,fmt", [
    ("llama2", "tokenizer.model", "llama2"),
    ("llama3", "original/tokenizer.model", "llama3"),
])
def test_original_meta_files_use_the_family_format(tokenizer_folders, tmp_path, family, file, fmt):
    # Meta's original folders have no tokenizer_config.json: the family's built-in format applies.
    info = tokenizer_folders(family, template=fmt)
    (tmp_path / "original").mkdir()
    (tmp_path / file).write_bytes((info.folder / file).read_bytes())
    tok = T.from_pretrained(tmp_path / file)
    assert tok.chat_format == fmt
    messages = CONVERSATIONS["multi_turn"]
    assert tok.tokenize_messages(messages)[0] == _hf_ids(info, messages)


def test_generation_prompt_matches(tokenizer_folders):
    info = tokenizer_folders("qwen2_5")
    messages = CONVERSATIONS["one_turn"][:1]
    tok = T.from_pretrained(info.folder)
    ids, mask = tok.tokenize_messages(messages, add_generation_prompt=True)
    assert ids == _hf_ids(info, messages, add_generation_prompt=True)
    assert all(mask)  # nothing to learn in a prompt
    assert tok.render_messages(messages, add_generation_prompt=True).endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("family", ["llama3", "qwen2_5", "llama2", "gemma"])
def test_train_on_input_trains_user_content_too(tokenizer_folders, family):
    tok = T.from_pretrained(tokenizer_folders(family).folder)
    messages = [
        {"role": "user", "content": "What is 7 x 6?", "masked": False},
        {"role": "assistant", "content": "It is 42."},
    ]
    ids, mask = tok.tokenize_messages(messages)
    runs = _trained_runs(ids, mask)
    texts = [tok.decode(r[:-1] if r[-1] in tok.stop_tokens else r).strip() for r in runs]
    assert texts == ["What is 7 x 6?", "It is 42."]


def test_message_objects_and_masked_flag(tokenizer_folders):
    from tunelib.data import Message

    tok = T.from_pretrained(tokenizer_folders("qwen2_5").folder)
    messages = [Message("user", "Hi"), Message("assistant", "Hello", masked=True)]
    ids, mask = tok.tokenize_messages(messages)
    assert all(mask)  # the one answer is masked on purpose
    assert ids == tok.tokenize_messages([m.__dict__ for m in messages])[0]


def test_template_that_rewrites_content_is_reported(tokenizer_folders, tmp_path):
    info = tokenizer_folders("qwen2_5")
    for f in info.folder.iterdir():
        if f.is_file():
            (tmp_path / f.name).write_bytes(f.read_bytes())
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}{{ m['content'][1:] }}<|im_end|>{% endfor %}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = T.from_pretrained(tmp_path)
    with pytest.raises(DataError, match="message 1 .*chat_format"):
        tok.tokenize_messages(CONVERSATIONS["one_turn"])


def test_chat_template_jinja_file_and_generation_tags(tokenizer_folders, tmp_path):
    info = tokenizer_folders("qwen2_5")
    for f in info.folder.iterdir():
        if f.is_file():
            (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "chat_template.jinja").write_text(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}<|im_end|>"
        "{% endgeneration %}{% else %}{{ m['content'] }}<|im_end|>{% endif %}\n{% endfor %}"
    )
    tok = T.from_pretrained(tmp_path)
    ids, mask = tok.tokenize_messages(CONVERSATIONS["one_turn"])
    # trim_blocks drops the newline after a block tag, as transformers renders it.
    assert tok.decode(ids) == "<|im_start|>user\nHello there<|im_end|><|im_start|>assistant\nHi! 42<|im_end|>"
    assert tok.decode([i for i, m in zip(ids, mask) if not m]) == "Hi! 42<|im_end|>"


def test_list_of_named_templates_uses_default(tokenizer_folders, tmp_path):
    info = tokenizer_folders("qwen2_5")
    for f in info.folder.iterdir():
        if f.is_file():
            (tmp_path / f.name).write_bytes(f.read_bytes())
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["chat_template"] = [{"name": "tool_use", "template": "TOOLS"},
                               {"name": "default", "template": config["chat_template"]}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    ours = T.from_pretrained(tmp_path).tokenize_messages(CONVERSATIONS["one_turn"])[0]
    assert ours == T.from_pretrained(info.folder).tokenize_messages(CONVERSATIONS["one_turn"])[0]


def test_bad_roles_and_content_are_data_errors(tokenizer_folders):
    tok = T.from_pretrained(tokenizer_folders("llama3").folder)
    with pytest.raises(DataError, match="message 0 has role 'human'"):
        tok.tokenize_messages([{"role": "human", "content": "hi"}])
    with pytest.raises(DataError, match="message 1 .*content of type list"):
        tok.tokenize_messages([{"role": "user", "content": "hi"}, {"role": "assistant", "content": ["x"]}])


def test_builtin_formats_reject_broken_alternation(tokenizer_folders):
    tok = T.from_pretrained(tokenizer_folders("llama2").folder, chat_format="llama2")
    with pytest.raises(DataError, match="alternate.*turn 1 is 'user'"):
        tok.tokenize_messages([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_plain_format_is_bos_text_eos(tokenizer_folders):
    tok = T.from_pretrained(tokenizer_folders("llama3").folder, chat_format="plain")
    messages = [{"role": "user", "content": "Q: 1+1?\nA: "}, {"role": "assistant", "content": "2"}]
    ids, mask = tok.tokenize_messages(messages)
    assert ids == tok.encode("Q: 1+1?\nA: 2")  # BOS, the text, EOS
    assert tok.decode([i for i, m in zip(ids, mask) if not m]) == "2<|eot_id|>"
