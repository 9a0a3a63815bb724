"""Read finished (or stopped) runs back from their folders: tunelib's, torchtune's, HF Trainer's.

A tunelib run folder holds config.yaml, metrics.jsonl and, once it ended, summary.json; its
trained parameters are counted from the safetensors headers of its newest checkpoint, so no
weight is read. A torchtune run is its DiskLogger file (`log_*.txt`, in the folder or its
`logs/`), with torchtune_config.yaml when present; an HF Trainer run is its `trainer_state.json`
(in the folder or its newest `checkpoint-N/`). lm-eval results written by
`tune run eleuther_eval output_path=RUN/eval.json` (any `eval*.json` in the folder) become
`eval.<task>.<metric>` scores.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunelib.errors import UserError

SWEEP_FILE = "sweep.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")
_HF_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_DISK_LINE = re.compile(r"^Step (\d+) \| (.*)$")
_PAIR = re.compile(r"([A-Za-z_][\w/.-]*):(\S+)")


@dataclass
class Run:
    """One run as a row of the comparison, with its loss curves: lists of (step, tokens or None, loss)."""

    name: str
    path: Path
    source: str  # tunelib, torchtune or hf
    config: dict[str, Any] = field(default_factory=dict)  # flattened: {"model.lora_rank": 8, ...}
    partial_config: bool = False  # only a sweep point's overrides: a key it lacks is unknown, not absent
    status: str | None = None  # a sweep point's status (done, failed, stopped, ...)
    method: str | None = None
    trainable_params: int | None = None
    steps: int | None = None
    tokens: int | None = None
    seconds: float | None = None
    tokens_per_second: float | None = None
    peak_memory_gib: float | None = None
    first_loss: float | None = None
    last_loss: float | None = None
    min_loss: float | None = None
    val_loss: float | None = None
    evals: dict[str, float] = field(default_factory=dict)
    train: list[tuple[int, int | None, float]] = field(default_factory=list)
    val: list[tuple[int, int | None, float]] = field(default_factory=list)


def find_runs(paths: list[str]) -> list[Run]:
    """Every run under `paths`: run folders, sweep folders (their points, in order), folders of runs, log files.

    Raises:
        UserError: a path does not exist, or holds no run.
    """
    runs: list[Run] = []
    for text in paths:
        path = Path(text).expanduser()
        if not path.exists():
            raise UserError(f"{text} does not exist")
        found = _runs_in(path, depth=2)
        if not found:
            raise UserError(f"no runs in {text}: a run folder has summary.json or metrics.jsonl (tunelib), "
                            "trainer_state.json (HF Trainer) or a log_*.txt DiskLogger file (torchtune)")
        runs += found
    _unique_names(runs)
    return runs


def _runs_in(path: Path, depth: int) -> list[Run]:
    if path.is_file():
        return [_read_file(path)] if _readable_file(path) else []
    if (path / SWEEP_FILE).is_file():
        return _sweep_runs(path)
    run = read_run(path)
    if run is not None:
        return [run]
    if depth == 0:
        return []
    return [r for child in sorted(p for p in path.iterdir() if p.is_dir()) for r in _runs_in(child, depth - 1)]


def _sweep_runs(folder: Path) -> list[Run]:
    """A sweep's points in its order; a point that never wrote anything is still a row (with its status)."""
    try:
        points = json.loads((folder / SWEEP_FILE).read_text()).get("points", [])
    except ValueError as e:
        raise UserError(f"{folder / SWEEP_FILE} is not readable JSON: {e}") from None
    runs = []
    for point in points:
        run_dir = folder / point["name"]
        run = read_run(run_dir) if run_dir.is_dir() else None
        if run is None and (run_dir / "config.yaml").is_file():  # the sweep wrote it; the run failed early
            run = _tunelib_run(run_dir)
        if run is None:
            config = {key: _value(value) for key, value in point.get("overrides", {}).items()}
            run = Run(point["name"], run_dir, "tunelib", config=config, partial_config=True)
        run.name, run.status = point["name"], point.get("status")
        runs.append(run)
    return runs


def read_run(folder: Path) -> Run | None:
    """The run in `folder` (tunelib, then HF Trainer, then torchtune), or None when it holds none."""
    if (folder / "summary.json").is_file() or (folder / "metrics.jsonl").is_file():
        return _tunelib_run(folder)
    state = _trainer_state(folder)
    if state is not None:
        return _hf_run(state, folder)
    logs = sorted([*folder.glob("log_*.txt"), *folder.glob("logs/log_*.txt")], key=lambda p: p.stat().st_mtime)
    return _torchtune_run(logs[-1], folder) if logs else None


def _readable_file(path: Path) -> bool:
    return path.name == "trainer_state.json" or (path.name.startswith("log_") and path.suffix == ".txt") or \
        path.name in ("summary.json", "metrics.jsonl")


def _read_file(path: Path) -> Run:
    if path.name == "trainer_state.json":
        return _hf_run(path, path.parent)
    if path.suffix == ".txt":
        return _torchtune_run(path, path.parent.parent if path.parent.name == "logs" else path.parent)
    return _tunelib_run(path.parent)


# -- tunelib ----------------------------------------------------------------------------------


def _tunelib_run(folder: Path) -> Run:
    run = Run(folder.name, folder, "tunelib", config=flatten(_yaml(folder / "config.yaml")))
    rows = _jsonl(folder / "metrics.jsonl")
    run.train = [(r["step"], r.get("tokens"), r["loss"]) for r in rows if _number(r.get("loss"))]
    tokens_at = {step: tokens for step, tokens, _ in run.train}
    run.val = [(r["step"], tokens_at.get(r["step"]), r["val_loss"]) for r in rows if _number(r.get("val_loss"))]
    _from_curves(run)
    summary = _json(folder / "summary.json") or {}
    for key in ("steps", "seconds", "peak_memory_gib", "first_loss", "last_loss", "val_loss"):
        if summary.get(key) is not None:
            setattr(run, key, summary[key])
    run.tokens = summary.get("trained_tokens", run.tokens)
    run.tokens_per_second = summary.get("trained_tokens_per_second")
    if summary.get("best_loss") is not None:
        run.min_loss = summary["best_loss"]
    if run.peak_memory_gib is None:
        run.peak_memory_gib = _max(r.get("peak_memory_gib") for r in rows)
    run.method = method_of(run.config)
    run.trainable_params = trainable_params(folder)
    run.evals = eval_scores(folder)
    return run


def method_of(config: dict[str, Any]) -> str | None:
    """full, lora, dora, qlora, llama-adapter v1/v2, from a flattened config's model keys (None without a model)."""
    if not any(key.startswith("model.") for key in config):
        return None
    if config.get("model.adapter"):
        return f"llama-adapter {config['model.adapter']}"
    lora = config.get("model.lora_attn_modules") or any(
        config.get(f"model.apply_lora_to_{part}") for part in ("mlp", "output", "embeddings"))
    if not lora:
        return "full"
    return "qlora" if config.get("model.quantize_base") else "dora" if config.get("model.use_dora") else "lora"


def trainable_params(folder: Path) -> int | None:
    """Parameters the run trained, counted in its newest checkpoint (final/, else the last step_N/): the
    adapter file's tensors when there is one, else the model's. None before any checkpoint."""
    steps = sorted((int(m.group(1)), p) for p in folder.glob("step_*") if (m := _STEP_DIR.match(p.name)))
    checkpoint = folder / "final" if (folder / "final").is_dir() else (steps[-1][1] if steps else None)
    if checkpoint is None:
        return None
    for name in ("adapter_model.safetensors", "tunelib_llama_adapter.safetensors"):
        found = sorted(checkpoint.rglob(name))
        if found:
            return _numel(found[:1])
    return _numel(sorted(checkpoint.glob("*.safetensors"))) or None


def _numel(files: list[Path]) -> int:
    """Elements of every tensor of safetensors `files`, from their JSON headers alone."""
    total = 0
    for path in files:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        for name, info in header.items():
            if name != "__metadata__":
                count = 1
                for dim in info["shape"]:
                    count *= dim
                total += count
    return total


def eval_scores(folder: Path) -> dict[str, float]:
    """lm-eval scores in `folder/eval*.json` (eleuther_eval's output_path): {"eval.task.metric": value}."""
    scores = {}
    for path in sorted(folder.glob("eval*.json")):
        results = (_json(path) or {}).get("results")
        for task, metrics in (results or {}).items():
            for metric, value in (metrics or {}).items():
                name = metric.split(",")[0]  # lm-eval's "acc,none": the metric, then its filter
                if _number(value) and "stderr" not in name:
                    scores[f"eval.{task}.{name}"] = value
    return scores


# -- HF Trainer ------------------------------------------------------------------------------


def _trainer_state(folder: Path) -> Path | None:
    if (folder / "trainer_state.json").is_file():
        return folder / "trainer_state.json"
    checkpoints = sorted((int(m.group(1)), p) for p in folder.glob("checkpoint-*") if (m := _HF_CHECKPOINT.match(p.name)))
    return checkpoints[-1][1] / "trainer_state.json" if checkpoints and (checkpoints[-1][1] / "trainer_state.json").is_file() else None


def _hf_run(path: Path, folder: Path) -> Run:
    state = _json(path)
    if state is None:
        raise UserError(f"{path} is not readable JSON")
    history = state.get("log_history", [])
    run = Run(folder.name, folder, "hf")
    run.train = [(r["step"], r.get("num_input_tokens_seen"), r["loss"]) for r in history if _number(r.get("loss"))]
    run.val = [(r["step"], r.get("num_input_tokens_seen"), r["eval_loss"]) for r in history if _number(r.get("eval_loss"))]
    _from_curves(run)
    run.steps = state.get("global_step", run.steps)
    run.seconds = _max(r.get("train_runtime") for r in history)
    run.tokens = state.get("num_input_tokens_seen") or run.tokens
    if run.tokens and run.seconds:
        run.tokens_per_second = run.tokens / run.seconds
    adapter = next((p for p in (folder / "adapter_config.json", path.parent / "adapter_config.json") if p.is_file()), None)
    if adapter is not None:
        peft = _json(adapter) or {}
        run.method = "dora" if peft.get("use_dora") else str(peft.get("peft_type", "lora")).lower()
        run.config = {f"peft.{key}": value for key, value in peft.items() if key in ("r", "lora_alpha", "target_modules")}
    return run


# -- torchtune --------------------------------------------------------------------------------


def _torchtune_run(log: Path, folder: Path) -> Run:
    """A torchtune DiskLogger file: `Step N | loss:1.23 lr:0.0003 tokens_per_second_per_gpu:... `."""
    rows = []
    for line in log.read_text(errors="replace").splitlines():
        match = _DISK_LINE.match(line.strip())
        if match:
            row = {"step": int(match.group(1))}
            for key, value in _PAIR.findall(match.group(2)):
                row[key] = _float(value)
            rows.append(row)
    run = Run(folder.name, folder, "torchtune")
    config = next((p for p in (folder / "torchtune_config.yaml", log.parent / "torchtune_config.yaml") if p.is_file()), None)
    if config is not None:
        run.config = flatten(_yaml(config))
        run.method = method_of(run.config)
    run.train = [(r["step"], None, r["loss"]) for r in rows if _number(r.get("loss"))]
    run.val = [(r["step"], None, r["val_loss"]) for r in rows if _number(r.get("val_loss"))]
    _from_curves(run)
    speeds = [r["tokens_per_second_per_gpu"] for r in rows if _number(r.get("tokens_per_second_per_gpu"))]
    run.tokens_per_second = sum(speeds) / len(speeds) if speeds else None
    run.peak_memory_gib = _max(r.get(k) for r in rows for k in ("peak_memory_reserved", "peak_memory_alloc"))
    return run


# -- helpers ----------------------------------------------------------------------------------


def _from_curves(run: Run) -> None:
    """Steps, tokens and losses as the curves give them (a summary, where there is one, is more exact)."""
    if run.train:
        losses = [loss for _, _, loss in run.train]
        run.first_loss, run.last_loss, run.min_loss = losses[0], losses[-1], min(losses)
        run.steps = run.train[-1][0]
        run.tokens = _max(tokens for _, tokens, _ in run.train)
    if run.val:
        run.val_loss = run.val[-1][2]


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """{"model": {"lora_rank": 8}} -> {"model.lora_rank": 8}; lists stay values."""
    if not isinstance(node, dict):
        return {prefix: node} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return {key.rstrip("."): value for key, value in out.items()}


def _unique_names(runs: list[Run]) -> None:
    """Two runs of the same folder name (two sweeps' `lora_rank-8`) are told apart by their parent's name."""
    for run in runs:
        if sum(r.name == run.name for r in runs) > 1:
            run.name = f"{run.path.parent.name}/{run.name}"


def _value(text: str) -> Any:
    """An override's text as YAML reads it (`8` -> 8, `[q_proj,v_proj]` -> a list)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _yaml(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _json(path: Path) -> dict | None:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _float(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def _max(values) -> Any:
    kept = [v for v in values if _number(v)]
    return max(kept) if kept else None
