"""Quantization-aware training in a run: the `quantizer` and `fake_quant_after_n_steps` settings.

`tunelib.training.setup` calls `prepare` among the model transformations (first, before
activation checkpointing, compile and FSDP2 wrap the layers) and adds `step_hooks` to the run;
both do nothing for a recipe without a quantizer. The fake quantization itself is
`tunelib.quantization.qat`.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import torch

from tunelib.config import instantiate
from tunelib.errors import CheckpointError
from tunelib.peft import apply_peft
from tunelib.quantization import qat


def prepare(model: torch.nn.Module, cfg) -> None:
    """Make `model`'s decoder-layer linears fake-quantize as `cfg.quantizer` says (no quantizer: nothing).

    Raises:
        ConfigError: a quantizer the model cannot take (group size, NF4 base, DoRA).
    """
    node = getattr(cfg, "quantizer", None)
    if node is not None:
        qat.prepare(model, instantiate(node))


def step_hooks(cfg) -> list:
    """The loop's step hooks for `fake_quant_after_n_steps` (none when it is unset)."""
    after = getattr(cfg, "fake_quant_after_n_steps", None)
    return [] if after is None else [qat.FakeQuantAfter(after)]


def check(cfg) -> list[str]:
    """What `tune validate` checks of QAT: the quantizer's arguments, and against the model on the
    meta device (when checkpoint_dir exists or the builder needs none) its group size and adapters.

    Raises:
        ConfigError: what `tune run` would refuse.
    """
    quantizer = instantiate(cfg.quantizer)
    try:
        model = apply_peft(instantiate(cfg.model, checkpoint_dir=cfg.checkpoint_dir))
    except CheckpointError:
        if Path(cfg.checkpoint_dir).is_dir():
            raise
        return []  # a builder that reads config.json: the recipe's preflight said so already
    qat.prepare(model, quantizer)
    return []


def quantize_command(cfg, model_dir: Path, adapter_dir: Path | None = None) -> str:
    """The `tune run quantize` command that turns a QAT run's output into the model it trained for."""
    quantizer = " ".join(shlex.quote(f"quantizer.{key}={value}") for key, value in cfg.quantizer.items())
    adapter = f" adapter_dir={shlex.quote(str(adapter_dir))}" if adapter_dir is not None else ""
    return (f"tune run quantize --config quantization checkpoint_dir={shlex.quote(str(model_dir))}{adapter} "
            f"{quantizer}")
