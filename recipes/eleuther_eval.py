"""Evaluate a model on lm-evaluation-harness tasks.

    pip install 'tunelib[eval]'
    tune run eleuther_eval --config eleuther_evaluation checkpoint_dir=/tmp/Llama-3.2-1B-Instruct \
        tasks=[hellaswag,arc_easy] limit=200 batch_size=8
    tune run eleuther_eval --config eleuther_evaluation checkpoint_dir=/tmp/Llama-3.2-1B-Instruct \
        adapter_dir=out/final/adapter tasks=[my_task] include_path=./my_tasks

checkpoint_dir is any folder `tune run generate` takes (an HF model, a full or merged
fine-tune, a `tune run quantize` folder), adapter_dir a LoRA/DoRA or LLaMA-Adapter on top.
include_path adds a folder of your own task YAMLs. The table of results is printed;
output_path also writes them as JSON.
"""

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tunelib.config.rules import device_problems, seed_problems
from tunelib.config import instantiate
from tunelib.config.schema import REQUIRED, setting
from tunelib.config.torchtune_inference import TorchtuneInferenceKeys
from tunelib.errors import ConfigError

NAMES = ("eleuther_eval",)
CONFIGS = ("eleuther_evaluation", "*/evaluation")
DISTRIBUTED = False


@dataclass(kw_only=True)
class _EvalSettings:
    """Keys of an evaluation config (torchtune's names)."""

    checkpoint_dir: str = setting(REQUIRED, "The model folder (HF, a fine-tune's output, a quantized folder).")
    adapter_dir: str | None = setting(None, "A LoRA/DoRA (PEFT) or LLaMA-Adapter folder to apply to checkpoint_dir.")
    tokenizer_dir: str | None = setting(None, "Where the tokenizer files are (default: the model folder).")
    chat_format: str | None = setting(None, "null: the folder's chat template (else the family's); or plain, jinja, a family name.")
    # `list | str`, not `list[str]`: the override parser keeps a bare list[str] value as one string.
    tasks: list | str = setting(REQUIRED, "lm-eval task or group names: [hellaswag, arc_easy], or hellaswag,arc_easy.")
    include_path: str | None = setting(None, "A folder of your own lm-eval task YAMLs.")
    limit: int | float | None = setting(None, "Examples per task (a number), or a fraction of each task; null: all.")
    num_fewshot: int | None = setting(None, "Few-shot examples per prompt (null: each task's default).")
    batch_size: int = setting(8, "Sequences scored at once (log-likelihood requests; generation runs one at a time).")
    max_seq_length: int | None = setting(None, "Longest context in tokens (null: the model's).")
    max_gen_toks: int = setting(256, "Tokens to generate when a generation task does not say.")
    apply_chat_template: bool = setting(False, "Wrap each prompt in the model's chat format (for instruct models).")
    output_path: str | None = setting(None, "Also write the results as JSON to this file.")
    seed: int = setting(1234, "Seed of lm-eval's sampling of few-shot examples and of any sampled generation.")
    device: str = setting("auto", "cuda, cpu, cuda:N or auto (cuda when available).")
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = setting("auto", "Weights' precision; auto keeps the checkpoint's (fp16 becomes fp32 on CPU).")

    @classmethod
    def value_problems(cls, cfg: dict) -> list[str]:
        """The seed's range and a device torch knows, checked with the config so `tune validate` sees them too."""
        return seed_problems(cfg) + device_problems(cfg)


@dataclass(kw_only=True)
class EvalSettings(TorchtuneInferenceKeys, _EvalSettings):
    """Its own keys first, then torchtune's model, checkpointer and tokenizer nodes (docs/after_training.md)."""

    @classmethod
    def value_problems(cls, cfg: dict) -> list[str]:
        return _EvalSettings.value_problems(cfg) + cls.torchtune_problems(cfg)


SCHEMA = EvalSettings


def main(cfg) -> int:
    harness = _harness()
    tasks = _tasks(cfg.tasks)
    _check(cfg)
    manager = harness.task_manager(tasks, cfg.include_path)  # unknown tasks stop here, before loading

    from tunelib.generation import load_model
    from tunelib.generation.torchtune_form import honour_torchtune_keys
    from tunelib.tokenizers import from_pretrained

    tokenizer = honour_torchtune_keys(cfg, instantiate)  # torchtune's nodes, if the config has them
    loaded = load_model(cfg.checkpoint_dir, adapter_dir=cfg.adapter_dir, dtype=cfg.dtype, device=cfg.device,
                        tokenizer_dir=cfg.tokenizer_dir)
    tokenizer = tokenizer or from_pretrained(loaded.tokenizer_dir, chat_format=cfg.chat_format)
    print(f"Evaluating {loaded.describe()} on {', '.join(tasks)}", flush=True)
    lm = harness.TunelibLM(loaded.model, tokenizer, batch_size=cfg.batch_size, max_seq_length=cfg.max_seq_length,
                           max_gen_toks=cfg.max_gen_toks)
    results = harness.evaluate(lm, tasks, manager=manager, limit=cfg.limit, num_fewshot=cfg.num_fewshot,
                               apply_chat_template=cfg.apply_chat_template, seed=cfg.seed)
    from lm_eval.utils import make_table

    print(make_table(results), flush=True)
    if cfg.output_path:
        _write(Path(cfg.output_path), results)
    return 0


def _harness():
    """tunelib.generation.harness, or a one-line error saying how to install lm-eval."""
    try:
        from tunelib.generation import harness
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] != "lm_eval":
            raise
        raise ConfigError("eleuther_eval needs lm-evaluation-harness: pip install 'tunelib[eval]' "
                          "(or pip install lm-eval)") from None
    return harness


def _tasks(value) -> list[str]:
    """Task names from a list or from one string (`hellaswag` or `hellaswag,arc_easy`, as lm-eval's CLI takes)."""
    names = value.split(",") if isinstance(value, str) else list(value)
    if not all(isinstance(name, str) for name in names):
        raise ConfigError(f"tasks={list(value)!r}; task names are text, e.g. tasks=[hellaswag,arc_easy]")
    names = [name.strip() for name in names if name.strip()]
    if not names:
        raise ConfigError("tasks is empty; name at least one lm-eval task, e.g. tasks=[hellaswag]")
    return names


def _check(cfg) -> None:
    for key in ("batch_size", "max_gen_toks"):
        if cfg[key] < 1:
            raise ConfigError(f"{key}={cfg[key]}; use 1 or more")
    if cfg.limit is not None and cfg.limit <= 0:
        raise ConfigError(f"limit={cfg.limit}; use a positive number of examples, a fraction in (0, 1), or null")


def _write(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    keep = {key: results.get(key) for key in ("results", "groups", "configs", "versions", "n-shot", "n-samples")}
    path.write_text(json.dumps(keep, indent=2, default=str) + "\n")
    print(f"Results written to {path}", flush=True)


if __name__ == "__main__":
    from tunelib.config import run_script

    run_script(main, SCHEMA, sys.argv[1:])
