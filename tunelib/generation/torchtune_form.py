"""What torchtune's generation and evaluation configs ask, done before the model is loaded.

The settings are `tunelib.config.torchtune_inference.TorchtuneInferenceKeys`; this acts on
them: the checkpointer's checks against the folder, the model node built on the meta device
(a named builder refuses a folder that holds another model), and the tokenizer node built.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from tunelib.checkpoint.torchtune_keys import check_checkpoint_files, check_model_type
from tunelib.errors import ConfigError
from tunelib.generation.loading import resolve_model_folder


def honour_torchtune_keys(cfg: Any, build: Callable) -> Any | None:
    """Check and build what torchtune's keys of an inference config say.

    Takes the checked config and the function that builds a `_component_` node (the config's
    `instantiate`). Returns the tokenizer the `tokenizer` node builds, or None without one.

    Raises:
        CheckpointError: the folder holds other files, another model type, or another model
            than the `model` node names.
        ConfigError: the `model` node asks for adapters (they come from adapter_dir).
    """
    if cfg.log_level is not None:
        logging.getLogger("tunelib").setLevel(cfg.log_level)
    node = cfg.checkpointer or {}
    folder = resolve_model_folder(cfg.checkpoint_dir)
    if node.get("checkpoint_files") is not None:
        check_checkpoint_files(folder, node["checkpoint_files"])
    if node.get("model_type") is not None:
        check_model_type(folder, node["model_type"])
    if cfg.model is not None:
        model = build(cfg.model, checkpoint_dir=str(folder))  # on meta: costs no memory
        if model.adapter_options is not None:
            raise ConfigError("the model node asks for adapters, but generation and evaluation load them from a "
                              "folder: remove the lora_*/adapter keys and set adapter_dir to the adapter folder")
    return build(cfg.tokenizer) if cfg.tokenizer is not None else None
