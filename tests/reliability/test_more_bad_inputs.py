"""Bad inputs that do not fit the catalogue's table (test_bad_inputs.py): a reader that goes away
(`tune ls | head`), an evaluation with no network, and a long list that is valid YAML. Each
runs `tune` in a process of its own, as the console script does, so that everything a library
prints on stderr is seen too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.recipes import tiny_model_folder

REPO = Path(__file__).resolve().parents[2]

# `tune` with every socket refused, as on a machine with no network: no name resolves and no
# connection opens. HF_HUB_OFFLINE is left unset, so tune must find out by itself.
OFFLINE_TUNE = """
import errno, socket, sys

def no_network(*args, **kwargs):
    raise OSError(errno.ENETUNREACH, "Network is unreachable")

def no_name(*args, **kwargs):
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

socket.socket.connect = no_network
socket.create_connection = no_network
socket.getaddrinfo = no_name
from tunelib.cli.main import main
sys.exit(main(sys.argv[1:]))
"""

HUB_TASK = """task: hub_arc
dataset_path: allenai/ai2_arc
dataset_name: ARC-Easy
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_choice: "{{choices.text}}"
doc_to_target: "{{choices.label.index(answerKey)}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    return env | {"HF_DATASETS_DISABLE_PROGRESS_BARS": "1"} | extra


def _tune(*argv: str, stdout=subprocess.PIPE, code: str | None = None, **env: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", code, *argv] if code else [sys.executable, "-m", "tunelib.cli.main", *argv]
    return subprocess.run(command, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=300,
                          env=_env(**env), cwd=REPO)


def _one_line(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == code, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tune: error: "), proc.stderr[-3000:]
    return lines[0]


def test_output_to_a_reader_that_went_away_ends_quietly():
    """`tune ls | head -1`: when the reader exits first, tune stops as Unix tools do: nothing on
    stderr, and the status a shell shows for a tool ended by SIGPIPE (128 + 13)."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before tune writes its first line
    try:
        proc = _tune("ls", stdout=write)
    finally:
        os.close(write)
    assert proc.stderr == "" and proc.returncode == 141


def test_eval_of_a_hub_task_without_network_fails_at_once_with_one_line(tmp_path):
    """Without network, `tune run eleuther_eval` on a task whose data is on the Hub says so in
    one line, instead of retrying for half a minute and ending in a traceback."""
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness is the optional extra `eval`")
    folder = tiny_model_folder(tmp_path / "model", "llama3_2")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "hub_arc.yaml").write_text(HUB_TASK)
    proc = _tune("run", "eleuther_eval", "--config", "eleuther_evaluation", f"checkpoint_dir={folder}",
                 f"include_path={tasks}", "tasks=[hub_arc]", "device=cpu", "limit=2", code=OFFLINE_TUNE,
                 HF_DATASETS_CACHE=str(tmp_path / "datasets_cache"), HF_HUB_CACHE=str(tmp_path / "hub_cache"))
    line = _one_line(proc)
    assert "cannot load the data of lm-eval task(s) hub_arc: Couldn't reach 'allenai/ai2_arc'" in line
    assert "only cached or local data can be used" in line


def _config_with_data_files(tmp_path: Path, count: int) -> Path:
    """The shipped LoRA config reading `count` data files, listed one a line as a user writes them."""
    text = (REPO / "recipes/configs/llama3_2/1B_lora_tunelib.yaml").read_text()
    anchor = "  packed: false\n"
    assert anchor in text
    files = "".join(f"    - {tmp_path}/shards/part-{i:05d}.jsonl\n" for i in range(count))
    path = tmp_path / "many_files.yaml"
    path.write_text(text.replace(anchor, anchor + "  source: json\n  data_files:\n" + files, 1))
    return path


def test_a_list_of_12000_data_files_is_valid_yaml(tmp_path):
    proc = _tune("validate", str(_config_with_data_files(tmp_path, 12_000)), "--recipe", "lora_finetune_single_device")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "well-formed" in proc.stdout and "malformed" not in proc.stderr


def test_yaml_aliases_that_multiply_a_file_are_still_refused(tmp_path):
    """What omegaconf's node limit is for: a few lines of aliases that expand to millions of nodes."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    path = tmp_path / "aliases.yaml"
    path.write_text("\n".join(lines) + "\n")
    assert "malformed YAML: YAML node expansion exceeds" in _one_line(_tune("validate", str(path)))
