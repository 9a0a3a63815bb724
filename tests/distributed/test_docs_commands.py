"""The commands of docs/distributed.md: each is accepted by `tune run` as written (recipe,
config, torchrun options, overrides), and the CPU one trains on two processes as written."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "distributed.md"


def doc_commands() -> list[str]:
    """Every `tune run --...` line inside the doc's code blocks (with SLURM's srun stripped)."""
    blocks = re.findall(r"```\n(.*?)```", DOC.read_text(), flags=re.S)
    lines = [line.strip() for block in blocks for line in block.splitlines()]
    return [line[line.index("tune run"):] for line in lines if "tune run --" in line]


def test_the_doc_shows_one_node_several_nodes_and_slurm():
    commands = doc_commands()
    assert any("--nnodes 4" in c and "--rdzv_endpoint HOST:29500" in c for c in commands)
    assert any("$SLURM_NNODES" in c for c in commands)
    assert len(commands) >= 5


@pytest.mark.parametrize("command", doc_commands())
def test_each_doc_command_is_accepted_as_written(command, monkeypatch, capsys):
    from tunelib.cli import run as run_verb
    from tunelib.cli.main import main

    handed = []
    monkeypatch.setattr(run_verb, "_torchrun", lambda args: handed.append(args) or 0)
    words = shlex.split(command)  # SLURM's "$VARIABLES" stay as words: torchrun is not started
    assert main(words[1:]) == 0, capsys.readouterr().err
    args = handed[0]
    assert args.training_script.endswith(("lora_finetune.py", "full_finetune.py", "adapter_finetune.py"))
    assert args.training_script_args[0] == "--config" and Path(args.training_script_args[1]).is_file()
    assert str(args.nproc_per_node) in command


@pytest.mark.slow
@pytest.mark.distributed
def test_the_cpu_command_trains_on_two_processes(tmp_path):
    (command,) = [c for c in doc_commands() if "demo/tiny_lora" in c]
    words = shlex.split(command)
    words = [f"output_dir={tmp_path / 'two'}" if w.startswith("output_dir=") else w for w in words]
    proc = subprocess.run([sys.executable, "-m", "tunelib.cli.main", *words[1:]], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 2 process(es) per node" in proc.stdout
    assert (tmp_path / "two/final/adapter/adapter_model.safetensors").is_file()
    assert (tmp_path / "two/final/merged/config.json").is_file()
