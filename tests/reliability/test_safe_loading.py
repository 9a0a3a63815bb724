"""Safe loading (issue 7): no file tunelib reads can run code, and no token leaks.

  - every `torch.load` in tunelib/ and recipes/ passes weights_only=True (a scan of the code);
  - a pickle whose payload would run code is refused, as the training state of a checkpoint
    being resumed and as the pytorch_model.bin of a model folder, and the payload never runs;
  - HF_TOKEN, used by `tune download` and present while training, appears in no output file,
    log or saved config;
  - the weights tunelib writes are safetensors; the training state is the only pickle, and it
    holds plain values that torch's weights-only loader reads.
"""

from __future__ import annotations

import ast
import contextlib
import io
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from support.data import write_rows
from support.fake_hub import FakeHub
from support.recipes import ROWS, tiny_model_folder, words

REPO = Path(__file__).resolve().parents[2]
LORA = ("lora_finetune_single_device", "--config", "llama3_2/1B_lora_tunelib")
TOKEN = "hf_secretTOKENfortunelibtests0123"
REPO_ID = "org/Tiny-Llama-3.2"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")


# -- 1. the code calls torch.load only with weights_only=True -------------------------------------


def unsafe_loads(source: str, filename: str = "<code>") -> list[str]:
    """Calls in `source` that can unpickle arbitrary objects: torch.load without
    weights_only=True (by any alias of torch), and the pickle module's loaders."""
    tree = ast.parse(source, filename)
    torch_names = {"torch"}
    loaders = set()  # names bound to torch.load itself (`from torch import load`)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            torch_names |= {a.asname for a in node.names if a.name == "torch" and a.asname}
        elif isinstance(node, ast.ImportFrom) and node.module in ("torch", "torch.serialization"):
            loaders |= {a.asname or a.name for a in node.names if a.name == "load"}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        is_torch_load = name in loaders or any(name in (f"{t}.load", f"{t}.serialization.load") for t in torch_names)
        safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                   for k in node.keywords)
        if (is_torch_load and not safe) or name in ("pickle.load", "pickle.loads", "pickle.Unpickler"):
            found.append(f"{filename}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_scan_finds_unsafe_loads():
    # The scan below would pass on any code if it recognised nothing; it recognises these.
    code = ("import torch\nimport torch as T\nimport pickle\nfrom torch import load as tl\n"
            "torch.load(p)\nT.load(p, weights_only=False)\ntl(p)\npickle.loads(b)\n"
            "torch.load(p, map_location='cpu', weights_only=True)\n")
    assert [line.split(": ", 1)[0] for line in unsafe_loads(code)] == ["<code>:5", "<code>:6", "<code>:7", "<code>:8"]


def test_every_torch_load_in_tunelib_and_recipes_is_weights_only():
    files = sorted([*(REPO / "tunelib").rglob("*.py"), *(REPO / "recipes").rglob("*.py")])
    calls = sum(f.read_text(encoding="utf-8").count("torch.load(") for f in files)
    assert calls > 0  # the loads exist, so the scan has something to check
    found = [hit for f in files for hit in unsafe_loads(f.read_text(encoding="utf-8"), str(f.relative_to(REPO)))]
    assert not found, "loads that can run code from a file:\n" + "\n".join(found)


# -- shared: a model downloaded with a token, and a short run on it --------------------------------


@dataclass
class Run:
    model: Path  # the folder `tune download` wrote
    output_dir: Path
    data: Path
    logs: str  # stdout and stderr of the download and of the training run
    token_sent: bool  # the fake Hub received the token (so it was really in play)


def _quiet_tune(*argv: str) -> tuple[int, str]:
    from tunelib.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue() + err.getvalue()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    """`tune download` of a gated tiny model with HF_TOKEN set, then 2 LoRA steps on it (HF_TOKEN still
    set), saving step_1."""
    from huggingface_hub import constants

    root = tmp_path_factory.mktemp("safe_loading")
    source = tiny_model_folder(root / "source", "llama3_2")
    files = {str(p.relative_to(source)): p.read_bytes() for p in source.rglob("*") if p.is_file()}
    model, out, data = root / "Tiny-Llama-3.2", root / "out", write_rows(root / "train.jsonl", ROWS)
    with FakeHub({REPO_ID: files}, gated={REPO_ID}, token=TOKEN) as hub, pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_TOKEN", TOKEN)
        mp.setenv("HF_HOME", str(root / "hf_home"))
        mp.setenv("HF_HUB_DISABLE_XET", "1")
        mp.delenv("HF_HUB_OFFLINE", raising=False)
        # huggingface_hub read HF_ENDPOINT when it was imported; point it at the fake Hub.
        mp.setattr(constants, "ENDPOINT", hub.url)
        mp.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
        mp.setattr(constants, "HF_HUB_OFFLINE", False)
        # The token both ways: in the environment, and as the flag that takes precedence over it.
        code, download_logs = _quiet_tune("download", REPO_ID, "--output-dir", str(model), "--hf-token", TOKEN)
        assert code == 0, download_logs
        code, train_logs = _quiet_tune("run", *LORA, *words(model, out, data, ("save_every_n_steps=1",
                                                                              "max_steps_per_epoch=2")))
        assert code == 0, train_logs
        sent = any(auth == f"Bearer {TOKEN}" for _, _, auth in hub.requests)
    return Run(model, out, data, download_logs + train_logs, sent)


def _one_error_line(tune, *argv: str) -> str:
    code, out, err = tune(*argv)
    assert "Traceback" not in out + err, err[-3000:]
    assert code == 2, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tune: error: "), err[-3000:]
    return lines[0]


class Payload:
    """Unpickling this runs code: it creates `marker` (what a real attack would do instead, it could)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def _armed(path: Path, obj, marker: Path) -> None:
    """Save `obj` (holding a Payload) to `path`, and show that an ordinary unpickling runs it."""
    torch.save(obj, path)
    torch.load(path, weights_only=False)  # what an unsafe loader would do
    assert marker.exists(), "the payload does not work, so refusing it would prove nothing"
    marker.unlink()


# -- 2. a malicious pickle is refused and never runs ------------------------------------------------


def test_a_payload_in_the_training_state_of_a_resumed_checkpoint_never_runs(run, tune, tmp_path):
    out, marker = tmp_path / "out", tmp_path / "payload_ran"
    shutil.copytree(run.output_dir, out)
    saved = torch.load(out / "step_1/training_state.pt", weights_only=True)
    _armed(out / "step_1/training_state.pt", {**saved, "rng": Payload(marker)}, marker)
    before = (out / "step_1/training_state.pt").read_bytes()

    line = _one_error_line(tune, "run", *LORA, *words(run.model, out, run.data, (
        "save_every_n_steps=1", "max_steps_per_epoch=2", f"resume_from_checkpoint={out / 'step_1'}")))
    assert f"refused to load {out / 'step_1/training_state.pt'}: it is a pickle that would run Python code" in line
    assert not marker.exists()
    assert (out / "step_1/training_state.pt").read_bytes() == before


def test_a_payload_in_the_pytorch_model_bin_of_checkpoint_dir_never_runs(run, tune, tmp_path):
    from safetensors.torch import load_file

    folder, marker = tmp_path / "model", tmp_path / "payload_ran"
    shutil.copytree(run.model, folder)
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()  # an old-style folder: weights as pytorch_model.bin
    _armed(folder / "pytorch_model.bin", {**weights, "model.extra": Payload(marker)}, marker)

    line = _one_error_line(tune, "run", *LORA, *words(folder, tmp_path / "out", run.data, ()))
    assert f"refused to load {folder / 'pytorch_model.bin'}: it is a pickle that would run Python code" in line
    assert not marker.exists()


def test_a_plain_pytorch_model_bin_still_loads(run, tmp_path):
    # The refusal above is of the payload, not of .bin files: the same tensors without it load.
    from safetensors.torch import load_file

    from tunelib.checkpoint import from_pretrained

    folder = tmp_path / "model"
    shutil.copytree(run.model, folder)
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")
    model = from_pretrained(folder)
    assert torch.equal(model.state_dict()["model.norm.weight"], weights["model.norm.weight"])


# -- 3. tokens stay out of logs and files ----------------------------------------------------------


def test_hf_token_appears_in_no_log_config_or_output_file(run):
    assert run.token_sent  # the download really used it
    assert TOKEN not in run.logs
    written = [p for folder in (run.output_dir, run.model) for p in folder.rglob("*") if p.is_file()]
    assert run.output_dir / "config.yaml" in written and run.output_dir / "metrics.jsonl" in written
    leaked = [str(p) for p in written if TOKEN.encode() in p.read_bytes()]
    assert not leaked, f"the token is in {leaked}"


# -- 4. weights are written as safetensors only ----------------------------------------------------


def test_outputs_hold_weights_as_safetensors_and_only_the_training_state_as_a_pickle(run):
    files = [p for p in run.output_dir.rglob("*") if p.is_file()]
    pickles = sorted(str(p.relative_to(run.output_dir)) for p in files if p.suffix in PICKLE_SUFFIXES)
    assert pickles == ["final/training_state.pt", "step_1/training_state.pt"]  # final's: to extend the run
    weights = {str(p.relative_to(run.output_dir)) for p in files if p.suffix == ".safetensors"}
    assert {"step_1/adapter/adapter_model.safetensors", "final/adapter/adapter_model.safetensors"} <= weights
    assert any(w.startswith("final/merged/model") for w in weights)
    # Random states, data position and optimizer are plain values: the weights-only loader reads them.
    state = torch.load(run.output_dir / "step_1/training_state.pt", weights_only=True)
    assert {"optimizer", "rng", "loader", "counters"} <= set(state)
