"""How tunelib recognises a tokenizer's family, and what it knows of every family's tokens.

The family (the name of a built-in chat format, see tunelib.families) only matters where a
folder does not say it itself: which built-in chat format to use when there is no Jinja
`chat_template`, and Llama 3's pad token.
"""

from __future__ import annotations

from tunelib.families import chat_format_of, families

# The built-in chat format of each model family, as family modules name them.
FAMILIES = tuple(dict.fromkeys(f.chat_format for f in families().values()))

# Tokens that end a turn in some family; each one present in a vocabulary is a stop token.
END_OF_TURN_TOKENS = (
    "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|im_end|>", "<|endoftext|>",
    "<end_of_turn>", "<|end|>",
)

# Llama 3 has no pad token in its files; Meta's reference fine-tuning pads with this one.
PAD_FALLBACKS = ("<|finetune_right_pad_id|>",)


def detect_family(special_tokens: dict[str, int], model_config: dict) -> str | None:
    """Guess the family from the special tokens, then from config.json's model_type (as the
    family modules map it)."""
    tokens = set(special_tokens)
    model_type = str(model_config.get("model_type", "")).lower()
    by_type = chat_format_of(model_type)
    if "<|start_header_id|>" in tokens:
        return "llama3"
    if "<|im_sep|>" in tokens:
        return "phi4"
    if "<|im_start|>" in tokens:
        if by_type == "qwen3" or "<think>" in tokens:
            return "qwen3"
        return "qwen2_5" if "<tool_call>" in tokens else "qwen2"
    if "<start_of_turn>" in tokens:
        return "gemma"
    if "<|user|>" in tokens and "<|end|>" in tokens:
        return "phi3"
    if "[INST]" in tokens:
        return "mistral"
    if by_type is not None:
        return by_type
    if model_type == "llama" or {"<s>", "</s>"} <= tokens:
        return "llama2"
    return None
