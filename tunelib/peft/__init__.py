"""Parameter-efficient fine-tuning as model transformations, written once for all families.

`apply_peft` swaps modules of a (meta-device) model by their Hugging Face names; the model
code itself knows nothing about adapters.
"""

from __future__ import annotations


def apply_peft(
    model,
    *,
    lora_attn_modules: list[str] | None = None,
    apply_lora_to_mlp: bool = False,
    apply_lora_to_output: bool = False,
    apply_lora_to_embeddings: bool = False,
    lora_rank: int = 8,
    lora_alpha: float = 16.0,
    lora_dropout: float = 0.0,
    use_rslora: bool = False,
    use_dora: bool = False,
    quantize_base: bool = False,
):
    """Apply the adapter settings of a model config to `model` in place and return it.

    Every model builder takes exactly these keywords (plus `checkpoint_dir`) and passes them
    here, so the LoRA/DoRA/QLoRA keys of a config work with every family.
    """
    wants_adapter = bool(lora_attn_modules) or apply_lora_to_mlp or apply_lora_to_output
    if wants_adapter or apply_lora_to_embeddings or use_dora or quantize_base:
        raise NotImplementedError("LoRA/DoRA/QLoRA transformations are being written")
    return model
