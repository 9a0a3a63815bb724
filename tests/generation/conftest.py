"""Tiny models and the folders a user has after training, shared by the generation tests.

The folders come from the real `tune run` (2 steps on a tiny model, fp32 on CPU), so the tests
read exactly what users will point the commands at. Built once per session: fine-tuning is
the slow part.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """family -> a tiny tunelib CausalLM in fp32, eval mode (built once per test module)."""
    pytest.importorskip("transformers")
    from support.models import make_hf_model_folder
    from tunelib.checkpoint import from_pretrained

    cache = {}

    def get(family: str = "llama3_2"):
        if family not in cache:
            folder = make_hf_model_folder(tmp_path_factory.mktemp(family), family)
            cache[family] = from_pretrained(folder, dtype="float32")
        return cache[family]

    return get


@dataclass
class Trained:
    """A base model folder and what each fine-tuning method wrote from it."""

    base: Path  # tiny llama3_2 (tied embeddings) + the tiny Llama 3 tokenizer
    lora: Path  # a LoRA run's final/: adapter/ (PEFT) and merged/
    dora: Path  # a DoRA run's final/ (adapter on the output layer too, which unties it)
    full: Path  # a full fine-tune's final/ (an HF folder)
    adapter_v2: Path  # a LLaMA-Adapter v2 run's final/adapter (tunelib's format)


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Trained:
    pytest.importorskip("transformers")
    from support.recipes import finetune, tiny_model_folder
    from tunelib.cli.main import main

    def tune(*words):
        return main(list(words)), "", ""

    root = tmp_path_factory.mktemp("trained")
    base = tiny_model_folder(root, "llama3_2")
    # A high learning rate, so two steps move the adapters far enough to change the logits.
    fast = ("max_steps_per_epoch=2", "lr_scheduler.num_warmup_steps=0", "optimizer.lr=2e-2")
    runs = {
        "lora": ("lora_finetune_single_device", "llama3_2/1B_lora_tunelib", *fast, "model.apply_lora_to_mlp=True"),
        "dora": ("lora_finetune_single_device", "llama3_2/1B_dora", *fast, "model.apply_lora_to_output=True"),
        "full": ("full_finetune_single_device", "llama3_2/1B_full_tunelib", "max_steps_per_epoch=2",
                 "optimizer._component_=torch.optim.AdamW", "optimizer_in_bwd=False", "optimizer.lr=1e-3"),
        # start layer 1 of 2, so one layer gets the prompts.
        "adapter_v2": ("adapter_finetune_single_device", "llama3_2/1B_adapter_v2", *fast, "model.adapter_start_layer=1"),
    }
    out = {}
    for name, (recipe, config, *extra) in runs.items():
        result = finetune(tune, recipe, config, base, root / name, *extra)
        assert result.code == 0, f"{name} fine-tune failed"
        out[name] = root / name / "final"
    return Trained(base, out["lora"], out["dora"], out["full"], out["adapter_v2"] / "adapter")


@pytest.fixture(scope="session")
def hf_logits():
    """(folder, ids) -> transformers' logits for `ids` from a model folder (fp32)."""
    import torch

    from support.models import load_hf_model

    def logits(folder, ids):
        with torch.no_grad():
            return load_hf_model(folder)(ids).logits

    return logits


@pytest.fixture(scope="session")
def peft_logits():
    """(base, adapter, ids) -> PEFT's logits for `ids`: the base folder with the adapter folder on top."""
    import torch

    from support.models import load_hf_model

    def logits(base, adapter, ids):
        from peft import PeftModel

        with torch.no_grad():
            return PeftModel.from_pretrained(load_hf_model(base), str(adapter)).eval()(ids).logits

    return logits
