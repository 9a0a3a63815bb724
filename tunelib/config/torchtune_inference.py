"""torchtune's keys in generation and evaluation configs, accepted with their meaning.

torchtune's `generation.yaml` and `<family>/evaluation.yaml` describe the model as a training
config does (a `model` node, a `checkpointer` naming the folder, a `tokenizer` node) and carry
keys tunelib's inference recipes have no use for. `tune run generate` and `tune run
eleuther_eval` take them through this mixin of settings; each recipe then calls
`tunelib.generation.torchtune_form.honour_torchtune_keys`, which acts on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tunelib.config.rules import checkpointer_folder_problems
from tunelib.config.schema import Component, component, setting

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(kw_only=True)
class TorchtuneInferenceKeys:
    """torchtune's model, checkpointer and tokenizer nodes, and the keys its inference files carry."""

    model: Component | None = component("torchtune's model node: built on the meta device and checked against checkpoint_dir's config.json (the weights come from checkpoint_dir; adapters from adapter_dir).", default=None, provided=("checkpoint_dir",))
    checkpointer: Component | None = component("torchtune's checkpointer node: its checkpoint_dir stands for checkpoint_dir; checkpoint_files and model_type are checked against the folder.", default=None)
    tokenizer: Component | None = component("torchtune's tokenizer node: builds the tokenizer (instead of tokenizer_dir), e.g. path: /tmp/Llama-2-7b-hf/tokenizer.model.", default=None)
    output_dir: str | None = setting(None, "torchtune's key: nothing is written there (its inference recipes write nothing either).")
    enable_kv_cache: bool = setting(True, "torchtune's key: the KV cache is always used, so only true.")
    quantizer: Component | None = component("torchtune's key: only null; to run a quantized model, set checkpoint_dir to a `tune run quantize` output folder.", default=None)
    resume_from_checkpoint: bool = setting(False, "torchtune's key: only false (there is nothing to resume).")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] | None = setting(None, "Level of tunelib's log lines (null: INFO).")

    @classmethod
    def torchtune_problems(cls, cfg: dict) -> list[str]:
        """What of torchtune's keys cannot be honoured, one line each."""
        problems = []
        if cfg.get("enable_kv_cache") is False:
            problems.append("enable_kv_cache=False: tunelib always generates with the KV cache; remove the key")
        if cfg.get("quantizer") is not None:
            problems.append("quantizer: tunelib runs a model quantized beforehand: `tune run quantize`, then set "
                            "checkpoint_dir to its output folder and quantizer to null")
        if cfg.get("resume_from_checkpoint"):
            problems.append("resume_from_checkpoint=True: generation and evaluation have nothing to resume; set it to false")
        problems += checkpointer_folder_problems(cfg, "checkpoint_dir")
        if cfg.get("tokenizer") is not None and cfg.get("tokenizer_dir") is not None:
            problems.append("tokenizer and tokenizer_dir both say where the tokenizer is; keep one")
        if cfg.get("tokenizer") is not None and cfg.get("chat_format") is not None:
            problems.append("with a tokenizer node, set its chat_format (tokenizer.chat_format) instead of chat_format")
        return problems
