"""The adapter settings a model config may carry, as data: what is asked, not how it is done.

Every model builder takes these keywords (plus `checkpoint_dir`), so a config's LoRA, DoRA,
QLoRA and LLaMA-Adapter keys work with every family and `tune validate` can check their names
and types from the builder's signature. A builder only records them on the model it returns
(`CausalLM.adapter_options`); `tunelib.peft.apply_peft` is what swaps the modules. Keeping the
two apart lets the model code stay below the adapter code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal


@dataclass(frozen=True, kw_only=True)
class AdapterOptions:
    """Adapter keywords of a model config (all optional; none set means full fine-tuning).

    - `lora_attn_modules`: any of q_proj, k_proj, v_proj, o_proj (torchtune's `output_proj`
      is read as `o_proj`); `apply_lora_to_mlp`: gate_proj, up_proj, down_proj;
      `apply_lora_to_output`: lm_head (with tied embeddings only the delta is on lm_head);
      `apply_lora_to_embeddings`: embed_tokens.
    - `lora_rank`, `lora_alpha`, `lora_dropout` (on the LoRA input only), `use_rslora`
      (scale alpha/sqrt(rank) instead of alpha/rank), `use_dora` (every target gets DoRA).
    - `quantize_base`: QLoRA; every linear inside the decoder layers holds a frozen NF4 weight.
    - `adapter`: LLaMA-Adapter "v1" (a gated prompt of `adapter_prompt_length` vectors in
      every layer from `adapter_start_layer`, counted from 0) or "v2" (v1 plus a scale and a
      bias on every linear but the embedding, and trainable norms). It replaces LoRA (no lora
      target may be set) and combines with `quantize_base`.
    """

    lora_attn_modules: list[str] | None = None
    apply_lora_to_mlp: bool = False
    apply_lora_to_output: bool = False
    apply_lora_to_embeddings: bool = False
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    use_rslora: bool = False
    use_dora: bool = False
    quantize_base: bool = False
    adapter: Literal["v1", "v2"] | None = None
    adapter_prompt_length: int = 10
    adapter_start_layer: int = 2

    def as_kwargs(self) -> dict[str, Any]:
        """The options as keywords of `tunelib.peft.apply_peft`."""
        return asdict(self)


ADAPTER_KEYWORDS = tuple(f.name for f in fields(AdapterOptions))
