"""torchtune 0.6.1: its single-device recipe classes, set up from a config as `tune run` does.

Settings are torchtune's shipped defaults where the workload does not fix them: AdamW with
fused=True, chunked cross-entropy (CEWithChunkedOutputLoss). The additions: the LoRA A
matrices are set to the shared init after setup, the probe wraps the metric logger, and the
end-of-epoch save is skipped (it happens after the timed steps).
"""

from __future__ import annotations

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from tunebench import data
from tunebench.driver_io import TORCHTUNE_LEAF, lora_split, parse_job
from tunebench.probe import Probe


class PackedRows(torch.utils.data.Dataset):
    """The benchmark's packs in torchtune's packed format (tokens, labels, input_pos, seq_lens)."""

    def __init__(self, path: str):
        self.seq_len, self.packs = data.load(path)

    def __len__(self) -> int:
        return len(self.packs)

    def __getitem__(self, i: int) -> dict:
        v = data.as_unshifted(self.packs[i], self.seq_len)
        return {"tokens": torch.tensor(v["tokens"]), "labels": torch.tensor(v["labels"]),
                "input_pos": torch.tensor(v["positions"]), "seq_lens": torch.tensor(v["seq_lens"])}


def packed_dataset(tokenizer, path: str, packed: bool = True) -> PackedRows:
    del tokenizer, packed  # pre-tokenized, pre-packed
    return PackedRows(path)


class BenchTokenizer:
    """What the recipes read from a tokenizer when the data is pre-tokenized."""

    pad_id, bos_id, eos_id = 0, 1, 2
    max_seq_len = None


def constant_schedule(optimizer, num_training_steps: int, last_epoch: int = -1):
    del num_training_steps
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0, last_epoch)


class ProbeLogger:
    def __init__(self, inner, probe: Probe):
        self.inner, self.probe = inner, probe

    def log_dict(self, payload: dict, step: int) -> None:
        self.probe.step(payload["loss"])
        self.inner.log_dict(payload, step)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def model_node(job) -> dict:
    w, s = job.workload, job.workload.shape
    family = "llama3_2" if s.tie_word_embeddings else "llama3_1"
    node = dict(vocab_size=s.vocab_size, num_layers=s.num_hidden_layers, num_heads=s.num_attention_heads,
                num_kv_heads=s.num_key_value_heads, embed_dim=s.hidden_size, intermediate_dim=s.intermediate_size,
                max_seq_len=131072, norm_eps=1e-5, rope_base=500000, scale_factor=int(s.rope_factor))
    if family == "llama3_2":
        node["tie_word_embeddings"] = True
    if w.method == "full":
        return {"_component_": f"torchtune.models.{family}.{family}", **node}
    attn, mlp = lora_split(w)
    prefix = "q" if w.method == "qlora" else ""
    return {"_component_": f"torchtune.models.{family}._component_builders.lora_{family}", **node,
            "lora_attn_modules": [TORCHTUNE_LEAF[a] for a in attn], "apply_lora_to_mlp": mlp,
            "apply_lora_to_output": False, "lora_rank": w.lora_rank, "lora_alpha": w.lora_alpha,
            "lora_dropout": 0.0, "quantize_base": prefix == "q"}


def config(job):
    w = job.workload
    out = str(job.workdir / "out")
    cfg = {
        "output_dir": out, "model": model_node(job),
        "tokenizer": {"_component_": "tunebench.drivers.run_torchtune.BenchTokenizer"},
        "checkpointer": {"_component_": "torchtune.training.FullModelHFCheckpointer",
                         "checkpoint_dir": str(job.model_dir), "checkpoint_files": ["model.safetensors"],
                         "recipe_checkpoint": None, "output_dir": out,
                         "model_type": "LLAMA3_2" if w.shape.tie_word_embeddings else "LLAMA3"},
        "resume_from_checkpoint": False, "save_adapter_weights_only": True,
        "dataset": {"_component_": "tunebench.drivers.run_torchtune.packed_dataset", "path": str(job.data),
                    "packed": True},
        "seed": w.seed, "shuffle": False, "batch_size": w.batch_size, "epochs": 1,
        "max_steps_per_epoch": w.steps, "gradient_accumulation_steps": 1, "clip_grad_norm": None,
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": w.lr, "weight_decay": 0.0, "fused": True},
        "lr_scheduler": {"_component_": "tunebench.drivers.run_torchtune.constant_schedule"},
        "loss": {"_component_": "torchtune.modules.loss.CEWithChunkedOutputLoss"},
        "optimizer_in_bwd": False, "compile": w.compile, "device": w.device, "dtype": w.dtype,
        "enable_activation_checkpointing": w.activation_checkpointing, "enable_activation_offloading": False,
        "metric_logger": {"_component_": "torchtune.training.metric_logging.DiskLogger", "log_dir": out},
        "log_every_n_steps": 1, "log_peak_memory_stats": False, "profiler": {"enabled": False},
    }
    return OmegaConf.create(cfg)


def set_lora_init(model: torch.nn.Module, path) -> None:
    """Copy the shared A matrices into torchtune's modules (layers.N.attn.q_proj.lora_a ...)."""
    with torch.no_grad():
        for key, a in load_file(str(path)).items():
            parts = key.removesuffix(".lora_A.weight").split(".")  # model layers N self_attn|mlp leaf
            block = "attn" if parts[3] == "self_attn" else "mlp"
            name = f"layers.{parts[2]}.{block}.{TORCHTUNE_LEAF[parts[4]]}.lora_a.weight"
            target = model.get_parameter(name)
            target.copy_(a.to(target.dtype))


def recipe_class(recipe: str, name: str):
    """A class from torchtune's recipe file, loaded by path as `tune run` does (recipes/ is no package)."""
    import importlib.util
    from pathlib import Path

    import torchtune

    path = Path(torchtune.__file__).parents[1] / "recipes" / f"{recipe}.py"
    spec = importlib.util.spec_from_file_location(f"torchtune_recipe_{recipe}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def main() -> None:
    import torchtune

    job = parse_job()
    cfg = config(job)
    if job.workload.method == "full":
        Recipe = recipe_class("full_finetune_single_device", "FullFinetuneRecipeSingleDevice")
    else:
        Recipe = recipe_class("lora_finetune_single_device", "LoRAFinetuneRecipeSingleDevice")
    recipe = Recipe(cfg=cfg)
    recipe.setup(cfg=cfg)
    if job.workload.method != "full":
        set_lora_init(recipe._model, job.lora_init)
    probe = Probe(job.workload.device)
    recipe._metric_logger = ProbeLogger(recipe._metric_logger, probe)
    recipe.save_checkpoint = lambda *a, **k: None
    recipe.train()
    recipe.cleanup()
    probe.write(job.out, library="torchtune", version=torchtune.__version__, torch=torch.__version__,
                threads=torch.get_num_threads(), settings=OmegaConf.to_container(cfg))


if __name__ == "__main__":
    main()
