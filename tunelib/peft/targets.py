"""Which modules get an adapter: config settings to Hugging Face module names.

Targets are named by the last part of a module's path, as PEFT's `target_modules` list does
(`q_proj` matches `model.layers.3.self_attn.q_proj`), so one table serves every family that
follows Hugging Face's names.
"""

from __future__ import annotations

import difflib
import re

from torch import nn

from tunelib.errors import ConfigError

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
OUTPUT = "lm_head"
EMBEDDING = "embed_tokens"
# torchtune's names for the same projections, accepted in `lora_attn_modules`.
ATTENTION_ALIASES = {"output_proj": "o_proj"}

_DECODER_LAYER = re.compile(r"(^|\.)layers\.\d+\.")


def attention_targets(lora_attn_modules) -> list[str]:
    """Validate `lora_attn_modules` and return it in Hugging Face names, in the given order.

    Raises ConfigError for a name that is not an attention projection, with a suggestion.
    """
    if lora_attn_modules is None:
        return []
    if isinstance(lora_attn_modules, str):
        raise ConfigError(
            f"lora_attn_modules must be a list such as ['q_proj', 'v_proj'], not the string {lora_attn_modules!r}"
        )
    names = []
    for name in lora_attn_modules:
        name = ATTENTION_ALIASES.get(name, name)
        if name not in ATTENTION:
            known = [*ATTENTION, *ATTENTION_ALIASES]
            close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"lora_attn_modules: unknown module '{name}'{hint}; choose from {', '.join(ATTENTION)}"
            )
        if name not in names:
            names.append(name)
    return names


def leaf_targets(lora_attn_modules, apply_lora_to_mlp: bool, apply_lora_to_output: bool,
                 apply_lora_to_embeddings: bool) -> list[str]:
    """The module leaf names that the builder settings ask to adapt, attention first."""
    names = attention_targets(lora_attn_modules)
    if apply_lora_to_mlp:
        names += MLP
    if apply_lora_to_output:
        names.append(OUTPUT)
    if apply_lora_to_embeddings:
        names.append(EMBEDDING)
    return names


def modules_named(model: nn.Module, leaves: list[str]) -> list[str]:
    """Full names of the modules of `model` whose last path part is in `leaves`, in model order.

    Raises ConfigError if a leaf name matches no module, since the setting would do nothing.
    """
    found = [name for name, _ in model.named_modules() if name.rsplit(".", 1)[-1] in leaves]
    seen = {name.rsplit(".", 1)[-1] for name in found}
    for leaf in leaves:
        if leaf not in seen:
            raise ConfigError(
                f"this {type(model).__name__} has no module named '{leaf}', so a LoRA on it cannot be applied"
            )
    return found


def in_decoder_layer(module_name: str) -> bool:
    """Whether a module sits inside a numbered decoder layer (`...layers.N....`)."""
    return bool(_DECODER_LAYER.search(module_name))
