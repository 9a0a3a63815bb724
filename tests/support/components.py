"""Components and a recipe written for the config system's own tests.

Tests allow this module with TUNELIB_ALLOW_MODULES=support, which also exercises the
documented opt-in for a user's own components.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal


def build_model(checkpoint_dir: str | None = None, lora_attn_modules: list[str] | None = None,
                lora_rank: int = 8, lora_alpha: float = 16.0, apply_lora_to_mlp: bool = False,
                norm: Literal["rms", "layer"] = "rms"):
    return {"kind": "model", "checkpoint_dir": checkpoint_dir, "lora_attn_modules": lora_attn_modules,
            "lora_rank": lora_rank, "lora_alpha": lora_alpha, "apply_lora_to_mlp": apply_lora_to_mlp,
            "norm": norm}


def build_other_model(checkpoint_dir: str | None = None, lora_attn_modules: list[str] | None = None,
                      lora_rank: int = 8, lora_alpha: float = 16.0, apply_lora_to_mlp: bool = False,
                      norm: str = "rms"):
    return {"kind": "other", "checkpoint_dir": checkpoint_dir, "lora_rank": lora_rank}


def build_dataset(tokenizer, source: str, data_files: str | None = None,
                  column_map: dict[str, str] | None = None, split: str = "train", **load_kwargs):
    return {"tokenizer": tokenizer, "source": source, "data_files": data_files,
            "column_map": column_map, "split": split, **load_kwargs}


def build_transform(scale: float = 1.0):
    return ("transform", scale)


def build_loader(dataset, transform=None, batch_size: int = 1):
    return {"dataset": dataset, "transform": transform, "batch_size": batch_size}


class Optimizer:
    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999)):
        self.params, self.lr, self.betas = params, lr, betas


RECIPE = '''
"""A recipe written for tests: it writes its config and rank to a JSON file and stops.

    tune run train_single_device --config tiny_lora
"""
import json, os, sys
from dataclasses import dataclass
from tunelib.config import Component, component, instantiate, run_script, setting, REQUIRED

NAMES = ("train_single_device", "train_distributed")
CONFIGS = ("*_lora", "*_full")

@dataclass(kw_only=True)
class SCHEMA:
    output_dir: str = setting(REQUIRED, "Where results go.")
    checkpoint_dir: str = setting("/tmp/model", "The model folder.")
    model: Component = component("The model.", provided=("checkpoint_dir",))
    dataset: Component = component("The data.", provided=("*1",))
    optimizer: Component = component("The optimizer.", provided=("*1",))
    batch_size: int = setting(2, "Sequences per step.")
    seed: int | None = setting(None, "Random seed.")
    lr_scale: float = setting(1.0, "A float setting.")
    dtype: str = setting("fp32", "Precision.")
    tags: list[str] = setting([], "Free labels.")

class Local:
    def __init__(self, x: int = 1):
        self.x = x

def main(cfg):
    model = instantiate(cfg.model, checkpoint_dir=cfg.checkpoint_dir)
    data = instantiate(cfg.dataset, "TOKENIZER")
    rank = int(os.environ.get("RANK", 0))
    out = {"rank": rank, "world": int(os.environ.get("WORLD_SIZE", 1)), "model": model,
           "dataset": data, "batch_size": cfg.batch_size, "seed": cfg.seed, "dtype": cfg.dtype,
           "tags": list(cfg.tags), "lr_scale": cfg.lr_scale}
    os.makedirs(cfg.output_dir, exist_ok=True)
    with open(os.path.join(cfg.output_dir, f"rank{rank}.json"), "w") as f:
        json.dump(out, f)
    print(f"wrote {cfg.output_dir}")
    if cfg.batch_size == 13:
        from tunelib.errors import DataError
        raise DataError("row 3 has no 'output' field")

if __name__ == "__main__":
    run_script(main, SCHEMA)
'''

CONFIG = '''
output_dir: {out}
checkpoint_dir: /tmp/model
model:
  _component_: support.components.build_model
  lora_attn_modules: [q_proj, v_proj]
  lora_rank: 8
dataset:
  _component_: support.components.build_dataset
  source: tatsu-lab/alpaca
optimizer:
  _component_: support.components.Optimizer
  lr: 3e-4
batch_size: 4
'''


def write_recipes(root: Path, out_dir: Path) -> Path:
    """A recipes folder (one recipe, two configs) like the shipped one; returns its path."""
    (root / "configs" / "tiny").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "train.py").write_text(RECIPE)
    (root / "configs" / "tiny" / "1B_lora.yaml").write_text(CONFIG.format(out=out_dir))
    (root / "configs" / "tiny" / "1B_full.yaml").write_text(CONFIG.format(out=out_dir))
    (root / "configs" / "orphan.yaml").write_text("x: 1\n")
    return root
