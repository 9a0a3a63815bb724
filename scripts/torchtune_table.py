"""Write the table of torchtune's config names and values that scripts/make_configs.py reads.

    python -m pip download --no-deps torchtune==0.6.1 -d /tmp/tt && unzip -q /tmp/tt/*.whl -d /tmp/tt/0.6.1
    python scripts/torchtune_table.py /tmp/tt/0.6.1 [TORCHTUNE_MAIN_CHECKOUT]

Each folder holds torchtune's `recipes/configs/` and `torchtune/_recipe_registry.py` (an
unzipped wheel or a git checkout). A name both know takes the release's values (what `pip
install torchtune` gives); names only on main take main's. Writes scripts/torchtune_configs.py
(values, for the generator) and recipes/data/torchtune_config_names.json (which names carry
torchtune's values, for `tune ls`, and which tunelib cannot run yet, for `tune run`/`tune cp`).
Files are read as text: torchtune is never imported.
"""

from __future__ import annotations

import json
import pprint
import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from support.torchtune_wheel import config_names  # noqa: E402 - torchtune's registry, read as the tests read it

NAMES_FILE = REPO / "recipes/data/torchtune_config_names.json"  # read by tunelib/registry.py
# torchtune recipes tunelib has under the same name.
RECIPES = {"full_finetune_single_device", "full_finetune_distributed", "lora_finetune_single_device",
           "lora_finetune_distributed", "eleuther_eval", "qat_single_device", "qat_distributed",
           "qat_lora_finetune_distributed", "lora_dpo_single_device", "lora_dpo_distributed", "full_dpo_distributed",
           "knowledge_distillation_single_device", "knowledge_distillation_distributed"}
# Top-level keys that carry training behaviour; the rest (device, logging, profiler, paths)
# are translated or set by tunelib itself.
SETTINGS = {"seed", "shuffle", "batch_size", "epochs", "max_steps_per_epoch", "gradient_accumulation_steps",
            "clip_grad_norm", "compile", "dtype", "enable_activation_checkpointing",
            "enable_activation_offloading", "optimizer_in_bwd", "fsdp_cpu_offload", "save_adapter_weights_only",
            "log_every_n_steps", "log_peak_memory_stats", "resume_from_checkpoint", "run_val_every_n_steps",
            "batch_size_val", "data_parallel_shard_dim", "data_parallel_replicate_dim",
            "tasks", "limit", "max_seq_length", "fake_quant_after_n_steps", "kd_ratio"}
NODES = ("model", "dataset", "dataset_val", "optimizer", "lr_scheduler", "quantizer", "loss", "kd_loss", "teacher_model")
# Recipes whose `loss` is their objective's choice (DPO's loss, distillation's cross-entropy).
OBJECTIVE_RECIPES = {"lora_dpo_single_device", "lora_dpo_distributed", "full_dpo_distributed",
                     "knowledge_distillation_single_device", "knowledge_distillation_distributed"}
# Nodes whose only setting tunelib reads is a folder: DPO's reference and distillation's teacher.
FOLDERS = {"ref_checkpointer": "reference_checkpoint_dir", "teacher_checkpointer": "teacher_checkpoint_dir"}


def unsupported(name: str, recipe: str, raw: dict | None) -> bool:
    model = str(((raw or {}).get("model") or {}).get("_component_", ""))
    return (recipe not in RECIPES or raw is None or name.startswith("dev/")
            or "vision" in model or "llama4" in model)


def entry(name: str, recipe: str, raw: dict, version: str, text: str) -> dict:
    """The values tunelib's config for `name` must carry, in torchtune's keys."""
    settings = {k: raw[k] for k in SETTINGS if k in raw}
    for node in NODES:
        if node == "loss" and recipe not in OBJECTIVE_RECIPES:
            continue  # SFT's loss is tunelib's default cross-entropy, whichever torchtune names
        for key, value in (raw.get(node) or {}).items():
            if not (node == "model" and key == "_component_"):
                settings[f"{node}.{key}"] = value
    for node, key in FOLDERS.items():
        if (raw.get(node) or {}).get("checkpoint_dir"):
            settings[key] = str(raw[node]["checkpoint_dir"]).rstrip("/")
    if "max_seq_len" in (raw.get("tokenizer") or {}):
        settings["tokenizer.max_seq_len"] = raw["tokenizer"]["max_seq_len"]
    ckpt = raw.get("checkpointer") or {}
    tok = raw.get("tokenizer") or {}
    return {
        "version": version,
        "download": (re.findall(r"tune download (\S+)", text) or [""])[0],
        "downloads": re.findall(r"tune download (.+)$", text, flags=re.M)[1:],  # a teacher's, a reference's
        "recipe": recipe,
        "model": str((raw.get("model") or {}).get("_component_", "")).rsplit(".", 1)[-1],
        "checkpoint_dir": str(ckpt.get("checkpoint_dir") or raw.get("checkpoint_dir") or "").rstrip("/"),
        "tokenizer": str(tok.get("_component_", "")).rsplit(".", 1)[-1],
        "tokenizer_path": str(tok.get("path", "")),
        "output_dir": str(raw.get("output_dir", "")),
        "settings": dict(sorted(settings.items())),
    }


def collect(folders: list[tuple[str, Path]]) -> tuple[dict, dict]:
    """(name -> values of the configs tunelib runs, name -> torchtune recipe of those it cannot yet)."""
    configs, missing = {}, {}
    for version, folder in folders:
        for name, (recipe, path) in config_names(folder).items():
            if name in configs or name in missing or "/" not in name:
                continue  # generation, quantization, eleuther_evaluation: tunelib's own examples
            text = path.read_text() if path.is_file() else ""
            raw = yaml.safe_load(text) if text else None
            if unsupported(name, recipe, raw):
                missing[name] = recipe
            else:
                configs[name] = entry(name, recipe, raw, version, text)
    return dict(sorted(configs.items())), dict(sorted(missing.items()))


def main(argv: list[str]) -> int:
    """Write both tables from the folders given on the command line."""
    folders = [("0.6.1", Path(argv[0]))] + ([("main", Path(argv[1]))] if len(argv) > 1 else [])
    configs, missing = collect(folders)
    head = '"""{}\n\nWritten by scripts/torchtune_table.py from torchtune {}; do not edit by hand.\n"""\n\n'
    (REPO / "scripts/torchtune_configs.py").write_text(
        head.format("torchtune's configs that tunelib ships under the same names, in torchtune's keys.",
                    " and ".join(v for v, _ in folders))
        + f"CONFIGS = {pprint.pformat(configs, width=120, sort_dicts=False)}\n")
    names = {"about": f"Written by scripts/torchtune_table.py from torchtune {' and '.join(v for v, _ in folders)}: "
                      "torchtune's config names tunelib cannot run yet (-> torchtune's recipe), and those it "
                      "ships with torchtune's values (-> the torchtune they come from).",
             "not_yet": missing, "same_values": {n: e["version"] for n, e in configs.items()}}
    NAMES_FILE.parent.mkdir(exist_ok=True)
    NAMES_FILE.write_text(json.dumps(names, indent=1, sort_keys=True) + "\n")
    print(f"{len(configs)} configs tunelib runs, {len(missing)} it does not yet")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
