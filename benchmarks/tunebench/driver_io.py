"""The command line every driver shares, and what it reads.

    python -m tunebench.drivers.<library> --workload W.json --assets DIR --data packs.json \
        --workdir DIR --out result.json
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from tunebench.workloads import Workload

# Hugging Face leaf name -> torchtune's, for LoRA targets and parameter names.
TORCHTUNE_LEAF = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "o_proj": "output_proj",
                  "gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


@dataclass
class Job:
    workload: Workload
    model_dir: Path
    lora_init: Path
    data: Path
    workdir: Path
    out: Path


def parse_job(argv=None) -> Job:
    p = argparse.ArgumentParser()
    for name in ("workload", "assets", "data", "workdir", "out"):
        p.add_argument(f"--{name}", required=True, type=Path)
    a = p.parse_args(argv)
    shutil.rmtree(a.workdir, ignore_errors=True)  # a fresh run each time (tunelib refuses a used output_dir)
    a.workdir.mkdir(parents=True)
    w = Workload.from_dict(json.loads(a.workload.read_text()))
    return Job(w, a.assets / "model", a.assets / "lora_init.safetensors", a.data, a.workdir, a.out)


def lora_split(w: Workload) -> tuple[list[str], bool]:
    """(attention targets, whether the MLP is targeted); the MLP is all or nothing in torchtune and tunelib."""
    mlp = [t for t in w.lora_targets if t in MLP]
    if mlp and len(mlp) != len(MLP):
        raise ValueError("LoRA on the MLP is all three projections or none (torchtune and tunelib configs)")
    return [t for t in w.lora_targets if t in ATTENTION], bool(mlp)
