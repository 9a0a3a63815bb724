"""`from_pretrained`: build the right Tokenizer for a model folder."""

from __future__ import annotations

from tunelib.errors import DataError
from tunelib.tokenizers.chat_formats import BUILTIN_FORMATS, BuiltinChatFormat, Specials
from tunelib.tokenizers.families import END_OF_TURN_TOKENS, PAD_FALLBACKS, detect_family
from tunelib.tokenizers.folder import TokenizerFiles, locate, token_string
from tunelib.tokenizers.jinja_format import JinjaChatFormat
from tunelib.tokenizers.tokenizer import Tokenizer


def from_pretrained(
    path,
    max_seq_len: int | None = None,
    *,
    chat_format: str | None = None,
    truncation_type: str = "right",
    prompt_template=None,
    merges_file=None,
) -> Tokenizer:
    """Load the tokenizer of a model folder.

    `path`: the model folder, or a tokenizer file inside it (`tokenizer.json`,
    `tokenizer.model`, `original/tokenizer.model`; `vocab.json`/`merges.txt` mean the folder).
    In a folder, `tokenizer.json` is preferred. BOS/EOS/pad, the chat template and stop tokens
    come from `tokenizer_config.json`, `special_tokens_map.json`, `generation_config.json` and
    `chat_template.jinja` where present.
    `max_seq_len`: truncate tokenized conversations to this length (None: never).
    `chat_format`: None uses the folder's Jinja chat template, else the family's built-in
    format; "jinja", "plain" (no chat markers) or a family name force one.
    `truncation_type`: "right" keeps the start of long sequences, "left" the end.
    `prompt_template`, `merges_file`: accepted so torchtune configs load; a prompt template
    must be null (use chat_format), merges_file is not needed (tokenizer.json is used).
    Raises DataError when the path holds no usable tokenizer.
    """
    return load(path, max_seq_len, chat_format=chat_format, truncation_type=truncation_type,
                prompt_template=prompt_template, merges_file=merges_file, family=None)


def load(path, max_seq_len=None, *, chat_format=None, truncation_type="right",
         prompt_template=None, merges_file=None, family=None) -> Tokenizer:
    """`from_pretrained` with an optional family (the family builders pass theirs)."""
    if prompt_template is not None:
        raise DataError(
            "tokenizer.prompt_template is not supported; the model folder's chat template is "
            "used, or set tokenizer.chat_format (plain, jinja, " + ", ".join(BUILTIN_FORMATS) + ")"
        )
    del merges_file  # torchtune's Qwen configs pass it; the folder's tokenizer.json has the merges
    files = locate(path)
    codec = _codec(files)
    cfg = _settings(files)
    family = family or detect_family(codec.special_tokens, files.model_config)

    bos = _special(cfg, "bos_token", _default_bos(files, codec))
    eos = _special(cfg, "eos_token", _default_eos(files, codec))
    bos_id, eos_id = _id(codec, bos, "bos_token"), _id(codec, eos, "eos_token")
    pad_id = _pad_id(cfg, files, codec, eos_id)
    stop_tokens = _stop_tokens(files, codec, eos_id)

    chat = _chat_format(chat_format, files, family, codec, bos, eos, stop_tokens, cfg)
    return Tokenizer(
        codec,
        bos_id=bos_id,
        eos_id=eos_id,
        pad_id=pad_id,
        stop_tokens=stop_tokens,
        chat_format=chat,
        max_seq_len=max_seq_len,
        truncation_type=truncation_type,
        add_bos=_adds_bos(files, codec),
        family=family,
        source=str(files.file),
    )


def _codec(files: TokenizerFiles):
    added = _added_tokens(files.tokenizer_config)
    if files.kind == "hf":
        from tunelib.tokenizers.hf_codec import HFCodec

        return HFCodec(files.file)
    if files.kind == "tiktoken":
        from tunelib.tokenizers.tiktoken_codec import TiktokenCodec

        return TiktokenCodec(files.file, added_tokens=added)
    from tunelib.tokenizers.sentencepiece_codec import SentencePieceCodec

    try:
        return SentencePieceCodec(files.file, added_tokens=added)
    except RuntimeError as e:  # sentencepiece's parse error
        raise DataError(f"{files.file} is neither a SentencePiece model nor a tiktoken file ({e}); "
                        "point tokenizer.path at the model folder") from None


def _added_tokens(tokenizer_config: dict) -> dict[str, int]:
    """Added tokens listed in tokenizer_config.json (Phi-3's <|user|>, Llama 3's specials)."""
    out = {}
    for token_id, token in (tokenizer_config.get("added_tokens_decoder") or {}).items():
        content = token_string(token)
        if content:
            out[content] = int(token_id)
    return out


def _settings(files: TokenizerFiles) -> dict:
    """Special-token settings: tokenizer_config.json wins over special_tokens_map.json."""
    cfg = {k: token_string(v) for k, v in files.special_tokens_map.items()}
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        if key in files.tokenizer_config:
            cfg[key] = token_string(files.tokenizer_config[key])
    return cfg


def _special(cfg: dict, key: str, default: str | None) -> str | None:
    # A key present with null means "none" (Qwen's bos_token: null).
    return cfg[key] if key in cfg else default


def _default_bos(files: TokenizerFiles, codec) -> str | None:
    if files.kind == "tiktoken":
        return "<|begin_of_text|>"
    if files.kind == "sentencepiece":
        i = codec.sp.bos_id()
        return codec.sp.id_to_piece(i) if i >= 0 else None
    return codec.post_processor_bos


def _default_eos(files: TokenizerFiles, codec) -> str | None:
    if files.kind == "tiktoken":
        return "<|end_of_text|>"
    if files.kind == "sentencepiece":
        i = codec.sp.eos_id()
        return codec.sp.id_to_piece(i) if i >= 0 else None
    eos = files.generation_config.get("eos_token_id")
    first = eos[0] if isinstance(eos, list) and eos else eos
    return codec.decode([first]) if isinstance(first, int) else None


def _adds_bos(files: TokenizerFiles, codec) -> bool:
    if "add_bos_token" in files.tokenizer_config:
        return bool(files.tokenizer_config["add_bos_token"])
    if files.kind == "hf":
        return codec.post_processor_bos is not None
    return True


def _id(codec, token: str | None, what: str) -> int | None:
    if token is None:
        return None
    i = codec.token_to_id(token)
    if i is None:
        raise DataError(f"the tokenizer's {what} {token!r} is not in its vocabulary; fix "
                        "tokenizer_config.json or point tokenizer.path at the right folder")
    return i


def _pad_id(cfg, files, codec, eos_id) -> int:
    """The pad id: configured pad token, else generation_config's, else a family fallback,
    else EOS. Padding never reaches the loss (its labels are -100), so any valid id works."""
    if cfg.get("pad_token"):
        return _id(codec, cfg["pad_token"], "pad_token")
    if isinstance(files.generation_config.get("pad_token_id"), int):
        return files.generation_config["pad_token_id"]
    for token in PAD_FALLBACKS:
        if token in codec.special_tokens:
            return codec.special_tokens[token]
    return eos_id if eos_id is not None else 0


def _stop_tokens(files, codec, eos_id) -> list[int]:
    stops = {eos_id} if eos_id is not None else set()
    gen_eos = files.generation_config.get("eos_token_id")
    stops.update(gen_eos if isinstance(gen_eos, list) else [gen_eos] if isinstance(gen_eos, int) else [])
    stops.update(codec.special_tokens[t] for t in END_OF_TURN_TOKENS if t in codec.special_tokens)
    return sorted(stops)


def _chat_format(name, files, family, codec, bos, eos, stop_tokens, cfg):
    if name is None or name == "auto":
        name = "jinja" if files.chat_template else (family or "plain")
    if name == "jinja":
        if not files.chat_template:
            raise DataError(f"tokenizer.chat_format=jinja but {files.file.parent} has no "
                            "chat_template; use a built-in format: " + ", ".join(BUILTIN_FORMATS))
        specials = {"bos_token": bos, "eos_token": eos, "pad_token": cfg.get("pad_token"),
                    "unk_token": cfg.get("unk_token")}
        end_markers = [eos] + [codec.decode([i]) for i in stop_tokens]
        return JinjaChatFormat(files.chat_template, specials, end_markers)
    return BuiltinChatFormat(name, Specials(bos=bos, eos=eos))
