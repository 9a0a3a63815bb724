"""Run the real `tune run` on a tiny model folder, the way a user points a shipped config at it.

    folder = tiny_model_folder(tmp_path, "llama3_2")           # weights + tokenizer, one folder
    result = finetune(tune, "lora_finetune_single_device", "llama3_2/1B_lora_tunelib", folder, tmp_path / "out")
    result.losses                                              # from output_dir/metrics.jsonl

The overrides swap in `tunelib.models.from_hf_config` and the folder's tokenizer, as issue 3
says any shipped config must allow, and train on a small local Alpaca-style file in fp32 on CPU.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from support.data import write_rows
from support.models import make_hf_model_folder
from support.tokenizers import write_tokenizer
from tunelib.families import families

# Tokenizer family of each model family: its built-in chat format, as its FAMILY says (the tiny
# tokenizers of support/tokenizers.py are named the same; see there for their vocab sizes).
TOKENIZER = {name: family.chat_format for name, family in families().items()}

ROWS = [
    {"instruction": "Add the two numbers.", "input": "3 and 4", "output": "7"},
    {"instruction": "Reverse the word.", "input": "cat", "output": "tac"},
    {"instruction": "Name a colour.", "input": "", "output": "Blue is a colour."},
    {"instruction": "Say hello in French.", "input": "", "output": "Bonjour!"},
    {"instruction": "What is 2 times 5?", "input": "", "output": "2 times 5 is 10."},
    {"instruction": "Write a short greeting.", "input": "to Ada", "output": "Hello Ada, nice to meet you."},
    {"instruction": "Give the opposite.", "input": "hot", "output": "cold"},
    {"instruction": "Count to three.", "input": "", "output": "1 2 3"},
] * 4


@dataclass
class Result:
    code: int
    out: str
    err: str
    output_dir: Path

    @property
    def metrics(self) -> list[dict]:
        path = self.output_dir / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    @property
    def losses(self) -> list[float]:
        return [m["loss"] for m in self.metrics if "loss" in m]


def tiny_model_folder(root: Path, family: str = "llama3_2", **config_overrides) -> Path:
    """A tiny model of `family` and its family's tiny tokenizer in one HF folder."""
    folder = Path(root) / f"{family}-tiny"
    if not (folder / "config.json").exists():
        vocab = {"llama3": 768}.get(TOKENIZER[family], 528)
        make_hf_model_folder(folder, family, vocab_size=config_overrides.pop("vocab_size", vocab), **config_overrides)
        write_tokenizer(folder, TOKENIZER[family])
    return folder


def data_file(root: Path, rows: list[dict] = ROWS) -> Path:
    return write_rows(Path(root) / "train.jsonl", rows)


def finetune(tune, recipe: str, config: str, folder: Path, output_dir: Path, *overrides: str,
             data: Path | None = None) -> Result:
    """`tune run RECIPE --config CONFIG` on `folder`, fp32 on CPU, 4 steps unless overridden."""
    code, out, err = tune("run", recipe, "--config", config, *words(folder, output_dir, data, overrides))
    return Result(code, out, err, output_dir)


def torchrun_finetune(nproc: int, recipe: str, config: str, folder: Path, output_dir: Path, *overrides: str,
                      data: Path | None = None, timeout: int = 300) -> Result:
    """The same through `tune run --nproc_per_node N ...` in a subprocess (gloo on CPU)."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "tunelib.cli.main", "run", "--nproc_per_node", str(nproc), recipe,
           "--config", config, *words(folder, output_dir, data, overrides)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr, output_dir)


def words(folder: Path, output_dir: Path, data: Path | None, overrides: tuple[str, ...]) -> list[str]:
    """The overrides that point a shipped config at a tiny folder (later ones win)."""
    data = data or data_file(output_dir.parent)
    return [
        f"checkpoint_dir={folder}", f"output_dir={output_dir}",
        "model._component_=tunelib.models.from_hf_config",
        "tokenizer._component_=tunelib.tokenizers.from_pretrained", "tokenizer.max_seq_len=256",
        "dataset.source=json", f"dataset.data_files={data}",
        "dtype=fp32", "device=cpu", "seed=0", "batch_size=2", "gradient_accumulation_steps=1",
        "max_steps_per_epoch=4", "enable_activation_checkpointing=False", *overrides,
    ]
