"""Tiny tokenizers for tests, written into model folders in each family's real file layout.

Every tokenizer is trained here, in well under a second, on a fixed corpus (English, code,
digits, whitespace runs, CJK, emoji), so tests never download anything. A recipe test can put
a tiny model beside one: make the model's vocab_size at least the tokenizer's.

    info = write_tokenizer(folder, "llama3")   # -> TokenizerInfo(vocab_size=768, ...)

Vocabulary sizes (ids 0..vocab_size-1):

| family | files | base vocab | special / added tokens | vocab_size |
|---|---|---|---|---|
| llama2 | tokenizer.model (+ tokenizer.json if asked) | 512 (<unk>=0 <s>=1 </s>=2) | - | 512 |
| llama3 | original/tokenizer.model (tiktoken), tokenizer.json | 512 | 256 from 512 (<|begin_of_text|>=512, <|eot_id|>=521) | 768 |
| qwen2 / qwen2_5 / qwen3 | tokenizer.json, vocab.json, merges.txt | 512 | <|endoftext|>=512 <|im_start|>=513 <|im_end|>=514, + tool (2.5) and think (3) tokens | 515 / 517 / 519 |
| mistral | tokenizer.model, tokenizer.json | 512 (<unk> <s> </s> [INST] [/INST] = 0..4) | - | 512 |
| gemma | tokenizer.model, tokenizer.json | 512 (<pad> <eos> <bos> <unk> = 0..3, turn tokens 4, 5) | - | 512 |
| phi3 | tokenizer.model, tokenizer.json | 512 (Llama 2 style) | 11 from 512 (<|endoftext|>=512, <|end|>=519, <|user|>=522) | 523 |
| phi4 | tokenizer.json | 512 | <|endoftext|>=512 <|im_start|>=513 <|im_end|>=514 <|im_sep|>=515 | 516 |

Each folder gets the family's tokenizer_config.json with its real chat template (from
tests/assets/chat_templates), special_tokens_map.json and generation_config.json. To put a
tiny model beside it, save the model first, then write the tokenizer: it leaves config.json
alone and only sets the stop-token ids (eos_token_id) in the model's generation_config.json.
"""

from __future__ import annotations

import base64
import io
import json
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"
TEMPLATES = ASSETS / "chat_templates"

BASE_VOCAB = 512

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Text the parity tests encode: whitespace runs, digits, CJK, emoji, code, chat markers.
SAMPLE_TEXTS = [
    "Hello world!",
    "  two  spaces,   three   spaces and a tab\there",
    "Numbers: 7, 42, 1234567 and 3.14159",
    "你好，世界！这是一个测试。日本語も少し。",
    "Emoji 😀🎉 and a rare one 🦜 in text",
    "def add(a, b):\n    return a + b  # sum\n\n\nprint(add(2, 3))",
    "\n\nleading newlines and trailing spaces   ",
    "   ",
    " x",
    "Ünïcödé àccents — and “quotes”",
    "<|im_start|>literal markers<|im_end|> [INST] inside [/INST]",
]


@dataclass(frozen=True)
class TokenizerInfo:
    """What a factory wrote: the folder, the file a config would point at, the sizes."""

    folder: Path
    path: Path
    vocab_size: int
    family: str


# -- corpus ----------------------------------------------------------------------------------

_WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from "
    "or one had by word but not what all were we when your can said there use an each which "
    "she do how their if will up other about out many then them these so some her would make "
    "like him into time has look two more write go see number no way could people my than "
    "first water been call who oil its now find long down day did get come made may part "
    "model token train learn data loss batch step layer weight answer question system user "
    "assistant hello world python function return value print list dict string"
).split()
_CODE = [
    "def f(x):\n    return x * 2\n",
    "for i in range(10):\n    print(i)\n",
    "if a == b:\n\treturn None\n",
    "class Foo:\n    pass\n",
    "x = {'a': 1, \"b\": [2, 3]}\n",
]
_CJK = "你好世界这是一个测试中文数据学习模型日本語文字"
_EMOJI = "😀🎉🚀✨👍🔥"


@lru_cache(maxsize=1)
def corpus() -> tuple[str, ...]:
    """A fixed training corpus (same on every machine)."""
    rng = random.Random(1234)
    lines = []
    for _ in range(1500):
        kind = rng.random()
        if kind < 0.55:
            words = rng.choices(_WORDS, k=rng.randint(3, 14))
            if rng.random() < 0.5:
                words[0] = words[0].capitalize()
            line = " ".join(words) + rng.choice([".", "!", "?", ",", ":", ""])
        elif kind < 0.7:
            line = rng.choice(_CODE)
        elif kind < 0.8:
            line = " ".join(str(rng.randint(0, 10 ** rng.randint(1, 7))) for _ in range(4))
        elif kind < 0.9:
            line = "".join(rng.choices(_CJK, k=rng.randint(2, 10))) + "。"
        elif kind < 0.95:
            line = rng.choice(_WORDS) + " " + "".join(rng.choices(_EMOJI, k=2))
        else:
            line = " " * rng.randint(1, 6) + rng.choice(_WORDS) + "\t" * rng.randint(0, 2) + "\n\n"
        lines.append(line)
    return tuple(lines)


# -- SentencePiece families (Llama 2, Mistral, Gemma, Phi-3) -----------------------------------


@lru_cache(maxsize=None)
def sentencepiece_model(style: str = "llama") -> bytes:
    """A BPE SentencePiece model with byte fallback; `style` is "llama", "mistral" (control
    [INST]/[/INST]) or "gemma" (Gemma's special ids, turn tokens, no dummy prefix)."""
    import sentencepiece as spm

    options = dict(
        vocab_size=BASE_VOCAB, model_type="bpe", byte_fallback=True, character_coverage=1.0,
        split_digits=True, allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", minloglevel=2, num_threads=1,
    )
    if style == "gemma":
        options.update(pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
                       bos_piece="<bos>", unk_piece="<unk>", add_dummy_prefix=False,
                       user_defined_symbols=["<start_of_turn>", "<end_of_turn>"])
    else:
        options.update(unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
        if style == "mistral":
            options.update(control_symbols=["[INST]", "[/INST]"])
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus()), model_writer=out, **options)
    return out.getvalue()


def _sentencepiece_to_json(model: bytes, *, dummy_prefix: bool, bos: str,
                           added: dict[str, int] | None = None) -> str:
    """The tokenizer.json Hugging Face ships beside such a model: a byte-fallback BPE whose
    merges follow the pieces' scores, with Llama's "legacy" normalizer (a space is prepended
    to each text piece) when the model adds a dummy prefix."""
    import sentencepiece as spm
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    from tunelib.tokenizers.sentencepiece_codec import user_defined_pieces

    sp = spm.SentencePieceProcessor(model_proto=model)
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    merges = []
    for piece, i in sorted(vocab.items(), key=lambda kv: kv[1]):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i) or len(piece) < 2:
            continue
        splits = [(piece[:k], piece[k:]) for k in range(1, len(piece))]
        splits = [s for s in splits if s[0] in vocab and s[1] in vocab]
        merges.extend(sorted(splits, key=lambda s: (vocab[s[0]], vocab[s[1]])))
    unk = sp.id_to_piece(sp.unk_id())
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True,
                               byte_fallback=True))
    replace = normalizers.Replace(" ", "▁")
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), replace]) if dummy_prefix else replace
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if dummy_prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(steps)
    specials = [sp.id_to_piece(i) for i in range(sp.get_piece_size())
                if sp.is_control(i) or sp.is_unknown(i)]
    tok.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in specials])
    user_defined = list(user_defined_pieces(sp.serialized_model_proto()))
    tok.add_tokens([AddedToken(s, normalized=False, special=False) for s in user_defined])
    for content, i in sorted((added or {}).items(), key=lambda kv: kv[1]):
        assert tok.get_vocab_size(with_added_tokens=True) == i, (content, i)
        tok.add_special_tokens([AddedToken(content, normalized=False, special=True)])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])])
    return tok.to_str()


# -- byte-level BPE families (Llama 3, Qwen, Phi-4) ---------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


@lru_cache(maxsize=None)
def byte_level_bpe(pattern: str, nfc: bool = False) -> str:
    """tokenizer.json of a byte-level BPE with exactly BASE_VOCAB ids and no added tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BASE_VOCAB, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer)
    assert tok.get_vocab_size() == BASE_VOCAB, tok.get_vocab_size()
    return tok.to_str()


def _with_added(tokenizer_json: str, added: list[tuple[str, bool]], bos: str | None = None) -> str:
    """Add tokens (content, special) after the base vocabulary; optionally a BOS post-processor."""
    from tokenizers import AddedToken, Tokenizer, processors

    tok = Tokenizer.from_str(tokenizer_json)
    for content, special in added:
        token = AddedToken(content, normalized=False, special=special)
        (tok.add_special_tokens if special else tok.add_tokens)([token])
    if bos is not None:
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                          special_tokens=[(bos, bos_id)]),
        ])
    return tok.to_str()


def tiktoken_file(tokenizer_json: str) -> str:
    """The tiktoken form of a byte-level BPE: `base64(token bytes) rank` per line."""
    byte_of = {c: b for b, c in _bytes_to_unicode().items()}
    vocab = json.loads(tokenizer_json)["model"]["vocab"]
    lines = []
    for token, rank in sorted(vocab.items(), key=lambda kv: kv[1]):
        raw = bytes(byte_of[c] for c in token)
        lines.append(f"{base64.b64encode(raw).decode()} {rank}")
    return "\n".join(lines) + "\n"


# Real Llama 2 / Mistral / Phi-3 configs say "LlamaTokenizer" and Phi-4's "GPT2Tokenizer";
# transformers 5 then rebuilds the pipeline from its own class (a Metaspace that skips the
# dummy prefix before a leading space; GPT-2's split pattern) instead of reading
# tokenizer.json's. tunelib, like the `tokenizers` library, vLLM and SentencePiece itself, uses
# the file as written; this class makes transformers do so too.
AS_WRITTEN_CLASS = "PreTrainedTokenizerFast"

# -- folder writers -----------------------------------------------------------------------------


def _write_json(folder: Path, name: str, data: dict) -> None:
    (folder / name).write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")


def chat_template(name: str) -> str:
    """A real model's chat template from tests/assets/chat_templates."""
    return (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")


def _configs(folder: Path, *, bos, eos, pad=None, unk=None, template=None, add_bos=None,
             added: dict[str, int] | None = None, gen_eos=None, tokenizer_class=None) -> None:
    config = {"bos_token": bos, "eos_token": eos, "pad_token": pad, "unk_token": unk,
              "clean_up_tokenization_spaces": False, "model_max_length": 4096}
    if tokenizer_class:
        config["tokenizer_class"] = tokenizer_class
    if add_bos is not None:
        config["add_bos_token"] = add_bos
    if template is not None:
        config["chat_template"] = chat_template(template)
    if added:
        config["added_tokens_decoder"] = {
            str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                     "single_word": False, "special": True}
            for s, i in sorted(added.items(), key=lambda kv: kv[1])
        }
    _write_json(folder, "tokenizer_config.json", config)
    _write_json(folder, "special_tokens_map.json",
                {k: v for k, v in (("bos_token", bos), ("eos_token", eos), ("pad_token", pad),
                                   ("unk_token", unk)) if v is not None})
    if gen_eos is not None:
        # A model saved in the same folder may have written generation_config.json already:
        # keep its other settings, and make its token ids the tokenizer's.
        path = folder / "generation_config.json"
        generation = json.loads(path.read_text()) if path.is_file() else {}
        generation["eos_token_id"] = gen_eos
        _write_json(folder, "generation_config.json", generation)


def write_llama2(folder, *, template: str | None = "llama2", tokenizer_json: bool = True) -> TokenizerInfo:
    """A Llama 2 HF folder: tokenizer.model (SentencePiece) and tokenizer.json, as meta-llama's
    HF repos have them; without `tokenizer_json`, Meta's original layout (the .model only)."""
    folder = _folder(folder)
    model = sentencepiece_model("llama")
    (folder / "tokenizer.model").write_bytes(model)
    if tokenizer_json:
        (folder / "tokenizer.json").write_text(_sentencepiece_to_json(model, dummy_prefix=True, bos="<s>"))
    _configs(folder, bos="<s>", eos="</s>", unk="<unk>", template=template, add_bos=True,
             tokenizer_class=AS_WRITTEN_CLASS)
    return TokenizerInfo(folder, folder / "tokenizer.model", BASE_VOCAB, "llama2")


def llama3_added_tokens() -> list[str]:
    names = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
             "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>",
             "<|reserved_special_token_2|>", "<|start_header_id|>", "<|end_header_id|>",
             "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
    return names + [f"<|reserved_special_token_{3 + i}|>" for i in range(256 - len(names))]


def write_llama3(folder, *, template: str | None = "llama3_1", instruct: bool = True) -> TokenizerInfo:
    """Meta's Llama 3.x layout: original/tokenizer.model (tiktoken) and the HF tokenizer.json
    with the 256 special tokens from id 512."""
    folder = _folder(folder)
    base = byte_level_bpe(LLAMA3_PATTERN)
    (folder / "original").mkdir(exist_ok=True)
    (folder / "original" / "tokenizer.model").write_text(tiktoken_file(base))
    names = llama3_added_tokens()
    (folder / "tokenizer.json").write_text(
        _with_added(base, [(n, True) for n in names], bos="<|begin_of_text|>"))
    added = {n: BASE_VOCAB + i for i, n in enumerate(names)}
    eos = "<|eot_id|>" if instruct else "<|end_of_text|>"
    _configs(folder, bos="<|begin_of_text|>", eos=eos, template=template, added=added,
             gen_eos=[added["<|end_of_text|>"], added["<|eom_id|>"], added["<|eot_id|>"]],
             tokenizer_class="PreTrainedTokenizerFast")
    return TokenizerInfo(folder, folder / "original" / "tokenizer.model", BASE_VOCAB + 256, "llama3")


_QWEN_ADDED = {
    "qwen2": [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True)],
    "qwen2_5": [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
                ("<tool_call>", False), ("</tool_call>", False)],
    "qwen3": [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
              ("<tool_call>", False), ("</tool_call>", False), ("<think>", False),
              ("</think>", False)],
}


def write_qwen(folder, version: str = "qwen2_5", *, template: str | None = "default") -> TokenizerInfo:
    """A Qwen HF folder: tokenizer.json (byte-level BPE), vocab.json, merges.txt."""
    folder = _folder(folder)
    added = _QWEN_ADDED[version]
    tokenizer_json = _with_added(byte_level_bpe(QWEN_PATTERN, nfc=True), added)
    (folder / "tokenizer.json").write_text(tokenizer_json)
    spec = json.loads(tokenizer_json)["model"]
    _write_json(folder, "vocab.json", spec["vocab"])
    merges = [" ".join(m) if isinstance(m, list) else m for m in spec["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    ids = {s: BASE_VOCAB + i for i, (s, _) in enumerate(added)}
    _configs(folder, bos=None, eos="<|im_end|>", pad="<|endoftext|>",
             template=version if template == "default" else template, add_bos=False,
             added=ids, gen_eos=[ids["<|im_end|>"], ids["<|endoftext|>"]],
             tokenizer_class="Qwen2Tokenizer")
    return TokenizerInfo(folder, folder / "tokenizer.json", BASE_VOCAB + len(added), version)


def write_mistral(folder, *, template: str | None = "mixtral") -> TokenizerInfo:
    """A Mistral HF folder: tokenizer.model with [INST]/[/INST] control tokens, tokenizer.json."""
    folder = _folder(folder)
    model = sentencepiece_model("mistral")
    (folder / "tokenizer.model").write_bytes(model)
    (folder / "tokenizer.json").write_text(_sentencepiece_to_json(model, dummy_prefix=True, bos="<s>"))
    _configs(folder, bos="<s>", eos="</s>", unk="<unk>", template=template, add_bos=True,
             tokenizer_class=AS_WRITTEN_CLASS)
    return TokenizerInfo(folder, folder / "tokenizer.json", BASE_VOCAB, "mistral")


def write_gemma(folder, *, template: str | None = "gemma") -> TokenizerInfo:
    """A Gemma HF folder: tokenizer.model (no dummy prefix, turn tokens), tokenizer.json."""
    folder = _folder(folder)
    model = sentencepiece_model("gemma")
    (folder / "tokenizer.model").write_bytes(model)
    (folder / "tokenizer.json").write_text(_sentencepiece_to_json(model, dummy_prefix=False, bos="<bos>"))
    _configs(folder, bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>", template=template,
             add_bos=True, gen_eos=[1, 5], tokenizer_class="GemmaTokenizer")
    return TokenizerInfo(folder, folder / "tokenizer.json", BASE_VOCAB, "gemma")


PHI3_ADDED = ["<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|placeholder2|>",
              "<|placeholder3|>", "<|placeholder4|>", "<|system|>", "<|end|>",
              "<|placeholder5|>", "<|placeholder6|>", "<|user|>"]


def write_phi3(folder, *, template: str | None = "phi3") -> TokenizerInfo:
    """A Phi-3 HF folder: Llama 2 style tokenizer.model plus 11 added tokens from id 512."""
    folder = _folder(folder)
    model = sentencepiece_model("llama")
    (folder / "tokenizer.model").write_bytes(model)
    added = {s: BASE_VOCAB + i for i, s in enumerate(PHI3_ADDED)}
    (folder / "tokenizer.json").write_text(
        _sentencepiece_to_json(model, dummy_prefix=True, bos="<s>", added=added))
    _configs(folder, bos="<s>", eos="<|endoftext|>", pad="<|endoftext|>", unk="<unk>",
             template=template, added=added,
             gen_eos=[added["<|endoftext|>"], added["<|assistant|>"], added["<|end|>"]],
             tokenizer_class=AS_WRITTEN_CLASS)
    return TokenizerInfo(folder, folder / "tokenizer.json", BASE_VOCAB + len(added), "phi3")


def write_phi4(folder, *, template: str | None = "phi4") -> TokenizerInfo:
    """A Phi-4 HF folder: byte-level BPE tokenizer.json with ChatML-style tokens."""
    folder = _folder(folder)
    added = [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|im_sep|>", True)]
    (folder / "tokenizer.json").write_text(_with_added(byte_level_bpe(LLAMA3_PATTERN), added))
    _configs(folder, bos="<|endoftext|>", eos="<|im_end|>", pad="<|endoftext|>", template=template,
             add_bos=False, tokenizer_class=AS_WRITTEN_CLASS)
    return TokenizerInfo(folder, folder / "tokenizer.json", BASE_VOCAB + len(added), "phi4")


WRITERS = {
    "llama2": write_llama2,
    "llama3": write_llama3,
    "qwen2": lambda folder, **kw: write_qwen(folder, "qwen2", **kw),
    "qwen2_5": lambda folder, **kw: write_qwen(folder, "qwen2_5", **kw),
    "qwen3": lambda folder, **kw: write_qwen(folder, "qwen3", **kw),
    "mistral": write_mistral,
    "gemma": write_gemma,
    "phi3": write_phi3,
    "phi4": write_phi4,
}


def write_tokenizer(folder, family: str = "llama3", **kwargs) -> TokenizerInfo:
    """Write `family`'s tiny tokenizer into `folder` (created if needed)."""
    return WRITERS[family](folder, **kwargs)


def _folder(folder) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def folder_maker(root):
    """folder_for(family, **writer options) -> TokenizerInfo, each folder written once under
    `root` (for a session-scoped fixture)."""
    made = {}

    def folder_for(family: str, **options) -> TokenizerInfo:
        key = (family, tuple(sorted(options.items())))
        if key not in made:
            name = family + "".join(f"-{k}={v}" for k, v in key[1])
            made[key] = write_tokenizer(Path(root) / name, family, **options)
        return made[key]

    return folder_for
