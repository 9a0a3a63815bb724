"""tunelib: its own recipe assembly (`build_run`) and loop (`train`), as `tune run` does.

Settings are tunelib's defaults where the workload does not fix them (the loss is the default
LinearCrossEntropyLoss), except AdamW's `fused=True`, which torchtune's configs and the
Trainer use too. The only additions: the LoRA A matrices are set to the shared init after
assembly, the probe wraps the metric logger and records the batch shape (so a run that trained
on shorter rows than the peers would show), and the final save is skipped (it happens after
the timed steps).
"""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from tunebench import data
from tunebench.driver_io import lora_split, parse_job
from tunebench.probe import Probe


class PackedRows:
    """The benchmark's packs as a tunelib packed dataset (the loader pads each to max_seq_len)."""

    packed = True
    pad_id = 0
    name = "bench"

    def __init__(self, path: str):
        self.max_seq_len, self.packs = data.load(path)

    def __len__(self) -> int:
        return len(self.packs)

    def __getitem__(self, i: int) -> dict:
        return data.as_shifted(self.packs[i], self.max_seq_len)

    def find_token_id(self, limit: int):
        return None  # the benchmark's ids are drawn below vocab_size


def packed_dataset(tokenizer, path: str) -> PackedRows:
    del tokenizer  # pre-tokenized
    return PackedRows(path)


class ProbeLogger:
    """The run's metric logger, plus the probe (and `on_step`, if any) on every logged step."""

    def __init__(self, inner, probe: Probe, on_step=None):
        self.inner, self.probe, self.on_step = inner, probe, on_step

    def log(self, step: int, metrics: dict) -> None:
        if "loss" in metrics:
            self.probe.step(metrics["loss"])
            if self.on_step is not None:
                self.on_step()
        self.inner.log(step, metrics)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def config(job) -> dict:
    w = job.workload
    model = {"_component_": "tunelib.models.from_hf_config"}
    if w.method != "full":
        attn, mlp = lora_split(w)
        model.update(lora_attn_modules=attn, apply_lora_to_mlp=mlp, lora_rank=w.lora_rank,
                     lora_alpha=w.lora_alpha, lora_dropout=0.0, quantize_base=w.method == "qlora")
    cfg = {
        "output_dir": str(job.workdir / "out"), "checkpoint_dir": str(job.model_dir), "model": model,
        # The packs are made already; max_seq_len only tells the memory estimate their length.
        "tokenizer": {"_component_": "tunelib.tokenizers.from_pretrained", "path": str(job.model_dir),
                      "max_seq_len": w.seq_len},
        "dataset": {"_component_": "tunebench.drivers.run_tunelib.packed_dataset", "path": str(job.data)},
        "seed": w.seed, "shuffle": False, "batch_size": w.batch_size, "epochs": 1,
        "max_steps_per_epoch": w.steps, "gradient_accumulation_steps": 1,
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": w.lr, "weight_decay": 0.0, "fused": True},
        "dtype": w.dtype, "device": w.device, "compile": w.compile,
        "enable_activation_checkpointing": w.activation_checkpointing, "log_every_n_steps": 1
    }
    if w.method != "full":
        cfg["save_adapter_weights_only"] = True
    return cfg


class RecordingShape:
    """The run's objective, which also notes the (B, T) of the first batch it sees."""

    def __init__(self, objective, probe: Probe):
        self.objective, self.probe = objective, probe

    def __call__(self, model, batch):
        self.probe.extra.setdefault("batch_shape", list(batch["input_ids"].shape))
        return self.objective(model, batch)

    def __getattr__(self, name: str):  # count, host_inputs, unit: the objective's own
        if name == "objective":
            raise AttributeError(name)
        return getattr(self.objective, name)


def set_lora_init(model: torch.nn.Module, path) -> None:
    with torch.no_grad():
        for key, a in load_file(str(path)).items():
            weight = model.get_submodule(key.removesuffix(".weight")).weight
            weight.copy_(a.to(weight.dtype))


def run(job, on_step=None) -> None:
    """Train `job` with tunelib in this process and write the probe's result to `job.out`.

    `on_step()` is called after each optimizer step (benchmarks/gpu_check.py counts host syncs).
    """
    import yaml

    import tunelib
    from tunelib.config import allow_module, build_config
    from tunelib.training import train
    from tunelib.training.settings import FullSettings, LoRASettings
    from tunelib.training.objective_setup import next_token
    from tunelib.training.setup import build_run
    from tunelib.training.trained import FULL, LORA, Recipe

    allow_module("tunebench")
    path = job.workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config(job)))
    method = "full" if job.workload.method == "full" else "lora"
    cfg = build_config(path, [], FullSettings if method == "full" else LoRASettings)
    probe = Probe(job.workload.device)
    recipe = Recipe(f"{method}_finetune", trains=FULL if method == "full" else LORA, objective=next_token)
    with build_run(cfg, recipe) as built:
        run = built.run
        if method == "lora":
            set_lora_init(run.model, job.lora_init)
        run.logger = ProbeLogger(run.logger, probe, on_step)
        run.objective = RecordingShape(run.objective, probe)
        run.save = lambda run, final: None
        train(run)
    probe.write(job.out, library="tunelib", version=getattr(tunelib, "__version__", "0.1.0"),
                torch=torch.__version__, threads=torch.get_num_threads(),
                settings=json.loads(json.dumps(config(job))))


def main() -> None:
    run(parse_job())


if __name__ == "__main__":
    main()
