"""Write the shipped configs: recipes/configs/<family>/<size>_<method>.yaml.

    python scripts/make_configs.py          # rewrite them
    python scripts/make_configs.py --check  # exit 1 if any file differs (a test runs this)

One table of models and one template per method, so the configs cannot drift apart: every
default not written here lives, documented, in the recipe's settings (tunelib/training/settings.py).

Two kinds (docs/configs.md): every name torchtune has (`llama3_1/8B_lora_single_device`) carries
torchtune's values, from the table scripts/torchtune_table.py wrote (scripts/torchtune_configs.py),
with only components and paths changed to tunelib's; every other name is tunelib's own choice,
and where torchtune took a name first, tunelib's own is that name + `_tunelib`.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import re
import sys
from pathlib import Path

from tunelib.config.torchtune_names import equivalent
from tunelib.families import families

ROOT = Path(__file__).resolve().parents[1] / "recipes" / "configs"


# Each family module's FAMILY (tunelib/models/<family>.py) names its shipped configs:
# label -> (builder size, Hub repo id), its tokenizer builder and the tokenizer file.
FAMILIES = families()

# Bytes of GPU memory per parameter, and what the method trains.
METHODS = {
    "full": (4.5, "every weight (bf16 weights, 8-bit AdamW states, optimizer-in-backward)"),
    "lora": (2.0, "LoRA adapters on attention and MLP; bf16 base weights frozen"),
    "dora": (2.0, "DoRA adapters on attention and MLP; bf16 base weights frozen"),
    "qlora": (0.6, "LoRA adapters on attention and MLP; base weights frozen in NF4"),
    "adapter": (2.0, "LLaMA-Adapter v1 (gated prompts in the upper layers); bf16 base weights frozen"),
    "adapter_v2": (2.0, "LLaMA-Adapter v2 (gated prompts, per-channel scales and biases, norms); bf16 base weights frozen"),
    "qat_full": (4.5, "every weight, trained through int8-activation/int4-weight fake quantization (QAT)"),
    "qat_lora": (2.0, "LoRA adapters on attention and MLP over a frozen bf16 base fake-quantized to int8/int4 (QAT)"),
    "lora_dpo": (2.0, "DPO with LoRA adapters on attention and MLP; the bf16 base with adapters off is the reference"),
    "full_dpo": (6.5, "DPO of every weight; a frozen bf16 copy of the starting weights is the reference"),
}
# Preference (DPO) methods: the SFT method whose model and optimizer they start from.
PREFERENCE = {"lora_dpo": "lora", "full_dpo": "full"}
# The recipe that runs each method's configs.
RECIPES = {"full": "full_finetune", "adapter": "adapter_finetune", "adapter_v2": "adapter_finetune",
           "qat_full": "qat", "qat_lora": "qat_lora_finetune", "lora_dpo": "lora_dpo", "full_dpo": "full_dpo"}
GROUP_SIZES = (256, 128, 64, 32)  # QAT's int4 groups: torchtune's 256 where the model's sizes allow
GPU_GIB, OVERHEAD_GIB = 80, 12


def parameter_count(family: str, size: str) -> int:
    import importlib

    builder = getattr(importlib.import_module(f"tunelib.models.{family}"), f"{family}_{size}")
    return sum(p.numel() for p in builder().parameters())


@functools.cache
def vocabulary(family: str, size: str) -> int:
    import importlib

    return getattr(importlib.import_module(f"tunelib.models.{family}"), f"{family}_{size}")().config.vocab_size


@functools.cache
def qat_groupsize(family: str, size: str) -> int:
    """The largest int4 group size that divides the inputs of every linear inside the decoder layers."""
    import importlib

    from tunelib.quantization.qat import target_linears

    model = getattr(importlib.import_module(f"tunelib.models.{family}"), f"{family}_{size}")()
    inputs = {linear.in_features for linear in target_linears(model).values()}
    return next(g for g in GROUP_SIZES if all(n % g == 0 for n in inputs))


def gpus_needed(params: int, method: str) -> int:
    need = params * METHODS[method][0] / 2**30 + OVERHEAD_GIB
    n = math.ceil(need / (GPU_GIB * 0.9))
    return 1 << max(0, math.ceil(math.log2(n)))


def header(name: str, method: str, repo: str, folder: str, gpus: int) -> str:
    recipe = RECIPES.get(method, "lora_finetune")
    lines = [
        f"# {repo.split('/')[1]}: {METHODS[method][1]}, on {DATA.get(method, 'the Alpaca dataset')} "
        "(tunelib's own choices).",
        "#",
        f"#   tune download {repo} --output-dir {folder} --ignore-patterns \"original/consolidated*\"",
    ]
    if gpus == 1:
        lines.append(f"#   tune run {recipe}_single_device --config {name}")
        lines.append(f"#   tune run --nproc_per_node 8 {recipe}_distributed --config {name}   # on 8 GPUs")
    else:
        where = f"{gpus} GPUs" if gpus <= 8 else f"{gpus // 8} nodes of 8 GPUs (add --nnodes/--rdzv_endpoint)"
        lines.append(f"#   tune run --nproc_per_node {min(gpus, 8)} {recipe}_distributed --config {name}   # {where}")
    lines.append("#")
    lines.append("# Every key not written here has the default documented in tunelib/training/settings.py;")
    lines.append("# `tune validate` checks a changed copy, `tune cat` shows it with overrides applied.")
    return "\n".join(lines) + "\n"


def body(family: str, label: str, method: str, folder: str) -> str:
    if method in PREFERENCE:
        return preference_body(family, label, method, folder)
    fam = FAMILIES[family]
    size, _ = fam.configs[label]
    path = "${checkpoint_dir}" + (f"/{fam.tokenizer_file}" if fam.tokenizer_file else "")
    model = [f"  _component_: {fam.builder(size)}"]
    if method.startswith("adapter"):
        model += [f"  adapter: {'v2' if method == 'adapter_v2' else 'v1'}", "  adapter_prompt_length: 10",
                  "  adapter_start_layer: 2"]
    elif not method.endswith("full"):
        model += ["  lora_attn_modules: [q_proj, v_proj, o_proj]", "  apply_lora_to_mlp: true",
                  "  apply_lora_to_output: false", "  lora_rank: 8", "  lora_alpha: 16", "  lora_dropout: 0.0"]
        if method == "dora":
            model.append("  use_dora: true")
        if method == "qlora":
            model.append("  quantize_base: true")
    if method.endswith("full"):
        optimizer = ["  _component_: torchao.optim.AdamW8bit", "  lr: 2e-5", "optimizer_in_bwd: true"]
        schedule, accumulation = [], 1
    elif method.startswith("adapter"):
        # LitGPT's adapter defaults: torch's AdamW (lr 1e-3, weight decay 0.01), 100 warmup steps, 16 per step.
        optimizer = ["  _component_: torch.optim.AdamW", "  lr: 1e-3", "  weight_decay: 0.01"]
        schedule = ["lr_scheduler:", "  _component_: tunelib.training.get_cosine_schedule_with_warmup",
                    "  num_warmup_steps: 100"]
        accumulation = 8
    else:
        optimizer = ["  _component_: torch.optim.AdamW", "  lr: 3e-4", "  weight_decay: 0.01"]
        schedule = ["lr_scheduler:", "  _component_: tunelib.training.get_cosine_schedule_with_warmup",
                    "  num_warmup_steps: 100"]
        accumulation = 8
    run = f"{family}_{label.replace('.', '_')}".lower()
    lines = [
        f"output_dir: /tmp/tunelib/{run}/{method}",
        f"checkpoint_dir: {folder}",
        "",
        "model:", *model,
        "tokenizer:",
        f"  _component_: tunelib.tokenizers.{fam.tokenizer}",
        f"  path: {path}",
        "  max_seq_len: 2048",
        "checkpointer:",
        "  _component_: tunelib.training.HFCheckpointer",
        "  checkpoint_dir: ${checkpoint_dir}",
        "  output_dir: ${output_dir}",
        "",
        "dataset:",
        "  _component_: tunelib.data.alpaca_dataset",
        "  packed: false",
        "seed: null",
        "batch_size: 2",
        f"gradient_accumulation_steps: {accumulation}",
        "epochs: 1",
        "",
        "optimizer:", *optimizer,
        *schedule,
        "",
        *(qat_lines(family, size) if method.startswith("qat") else []),
        "dtype: bf16",
        "enable_activation_checkpointing: true",
        "compile: false",
        "log_every_n_steps: 1",
    ]
    return "\n".join(lines) + "\n"


DATA = {m: "UltraFeedback's binarized preference pairs" for m in PREFERENCE}


def preference_body(family: str, label: str, method: str, folder: str) -> str:
    """A DPO config: the SFT method's model and memory settings, preference pairs, the DPO loss and
    torchtune's DPO optimizer settings (AdamW, weight decay 0.05; lr 5e-4 for LoRA; 2e-5 for full
    fine-tuning, halved here for the smaller batches)."""
    sft = body(family, label, PREFERENCE[method], folder)
    head, tail = sft[:sft.index("\ndataset:")], sft[sft.index("\ndtype: "):]
    head = head.replace(f"/{PREFERENCE[method]}\n", f"/{method}\n", 1)
    head = head.replace("  max_seq_len: 2048", "  max_seq_len: 1024")  # a pair is two sequences
    lr = "5e-4" if method == "lora_dpo" else "1e-5"
    middle = [
        "", "dataset:", "  _component_: tunelib.data.preference_dataset",
        "  source: trl-lib/ultrafeedback_binarized", "  split: train",
        "seed: null", "batch_size: 2", "gradient_accumulation_steps: 8", "epochs: 1", "",
        "optimizer:", "  _component_: torch.optim.AdamW", "  weight_decay: 0.05", f"  lr: {lr}",
        "lr_scheduler:", "  _component_: tunelib.training.get_cosine_schedule_with_warmup", "  num_warmup_steps: 100",
        "loss:", "  _component_: tunelib.training.DPOLoss", "  beta: 0.1", "",
    ]
    return head + "\n".join(middle) + tail


def folder_of(repo: str) -> str:
    """Where the header's `tune download` puts a model (torchtune's folder names, kept)."""
    if repo.startswith("meta-llama/Llama-3.1-"):
        return f"/tmp/Meta-{repo.split('/')[1]}"
    return f"/tmp/{repo.split('/')[1]}"


def distillation_configs(taken: set[str]) -> dict[Path, str]:
    """`<teacher>_to_<student>_KD_lora` for each size of a family and the next larger one, named as
    torchtune names its pairs (qwen2/1.5_to_0.5B_KD_lora_single_device)."""
    out = {}
    for family, fam in FAMILIES.items():
        sizes = sorted(fam.configs, key=lambda label: parameter_count(family, fam.configs[label][0]))
        for student, teacher in zip(sizes, sizes[1:]):
            if vocabulary(family, fam.configs[student][0]) != vocabulary(family, fam.configs[teacher][0]):
                continue  # e.g. Qwen2.5 7B pads its vocabulary beyond 3B's: distillation compares token by token
            # torchtune drops the teacher's B ("8_to_1B"); a label like 235B-A22B is kept whole
            short = teacher.removesuffix("B") if teacher[:-1].replace(".", "").isdigit() else teacher
            name = f"{family}/{short}_to_{student}_KD_lora"
            name += TUNELIB_SUFFIX if name in taken else ""
            out[ROOT / f"{name}.yaml"] = distillation_config(family, name, student, teacher)
    return out


def distillation_config(family: str, name: str, student: str, teacher: str) -> str:
    """Knowledge distillation into a LoRA student: torchtune's KD settings (forward KL, kd_ratio 0.5)."""
    fam = FAMILIES[family]
    (small, small_repo), (big, big_repo) = fam.configs[student], fam.configs[teacher]
    gpus = gpus_needed(parameter_count(family, small), "lora") + gpus_needed(parameter_count(family, big), "lora") - 1
    head = header(name, "lora", small_repo, folder_of(small_repo), gpus).splitlines()
    head[0] = (f"# {small_repo.split('/')[1]} learns from {big_repo.split('/')[1]}: knowledge distillation into LoRA "
               "adapters, on the Alpaca dataset (tunelib's own choices).")
    head.insert(3, f"#   tune download {big_repo} --output-dir {folder_of(big_repo)} --ignore-patterns "
                   "\"original/consolidated*\"")
    head = "\n".join(line.replace("lora_finetune", "knowledge_distillation") for line in head) + "\n"
    text = body(family, student, "lora", folder_of(small_repo)).replace("/lora\n", "/KD_lora\n", 1)
    cut = text.index("\ndtype: ")
    teacher_lines = ["teacher_model:", f"  _component_: {fam.builder(big)}",
                     f"teacher_checkpoint_dir: {folder_of(big_repo)}",
                     "kd_loss:", "  _component_: tunelib.training.ForwardKLLoss", "kd_ratio: 0.5", ""]
    return head + "\n" + text[:cut] + "\n" + "\n".join(teacher_lines) + text[cut:]


def qat_lines(family: str, size: str) -> list[str]:
    """The quantizer a QAT config trains against (and `tune run quantize` is then given)."""
    return ["quantizer:", "  _component_: tunelib.quantization.Int8DynActInt4WeightQATQuantizer",
            f"  groupsize: {qat_groupsize(family, size)}", ""]


def configs() -> dict[Path, str]:
    """Every shipped config: path -> text."""
    out, taken = {}, torchtune_names()
    for family, fam in FAMILIES.items():
        for label, (size, repo) in fam.configs.items():
            folder = f"/tmp/{repo.split('/')[1]}"
            if repo.startswith("meta-llama/Llama-3.1-"):
                folder = f"/tmp/Meta-{repo.split('/')[1]}"  # torchtune's folder name, kept
            params = parameter_count(family, size)
            for method in (m for m in METHODS if fam.methods is None or m in fam.methods):
                name = f"{family}/{label}_{method}"
                name += TUNELIB_SUFFIX if name in taken else ""
                text = header(name, method, repo, folder, gpus_needed(params, method))
                out[ROOT / f"{name}.yaml"] = text + "\n" + body(family, label, method, folder)
    return {**out, **distillation_configs(taken), **torchtune_configs()}


TUNELIB_SUFFIX = "_tunelib"
# torchtune's optimizers without a twin in tunelib's dependencies: the same update, without
# bitsandbytes' paging (tunelib's optimizer_in_bwd and activation offloading save the memory).
OPTIMIZERS = {"bitsandbytes.optim.PagedAdamW": "torch.optim.AdamW",
              "bitsandbytes.optim.PagedAdamW8bit": "torchao.optim.AdamW8bit"}
FLOAT = re.compile(r"^-?[0-9.]+e-?[0-9]+$")
# torchtune keys a tunelib recipe lacks because the value they hold is all it does: LoRA never
# steps in backward, and an evaluation never resumes.
IMPLIED = {("lora_finetune", "optimizer_in_bwd", False), ("eleuther_eval", "resume_from_checkpoint", False)}


def written(recipe: str, key: str, value) -> bool:
    """Whether tunelib's config needs torchtune's top-level `key: value` written out."""
    short = recipe.removesuffix("_single_device").removesuffix("_distributed")
    return not (value is False and (short, key, value) in IMPLIED)


def torchtune_table() -> dict[str, dict]:
    """torchtune's config names and values (scripts/torchtune_configs.py), by name."""
    path = Path(__file__).resolve().parent / "torchtune_configs.py"
    spec = importlib.util.spec_from_file_location("torchtune_configs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CONFIGS


def torchtune_names() -> set[str]:
    """Every torchtune config name, the ones tunelib cannot run yet included."""
    names = json.loads((ROOT.parent / "data/torchtune_config_names.json").read_text())
    return set(torchtune_table()) | set(names["not_yet"])


def yaml_value(value) -> str:
    """A value as torchtune wrote it, in YAML that OmegaConf reads back the same."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, list):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    if isinstance(value, str) and not FLOAT.match(value):
        return value if re.fullmatch(r"[A-Za-z_][\w.]*", value) else json.dumps(value)
    return str(value)


def tunelib_builder(entry: dict) -> tuple[str, list[str]]:
    """tunelib's model builder for torchtune's, and the keys a `qlora_` builder implied."""
    name, extra = entry["model"], []
    if name.startswith("qlora_"):
        extra.append("quantize_base: true")
    name = re.sub(r"^q?lora_", "", name)
    name = re.sub(r"_(instruct|base)$", "", name)
    family = name.rsplit("_", 1)[0]
    if family == "mistral" and "v0.1" in entry["checkpoint_dir"]:
        name = "mistral_7b_v0_1"
    if family not in FAMILIES or name == family:
        # code_llama2: Llama 2 layers; a family's generic builder (TinyLlama's llama2 with its sizes
        # written out): both read from config.json.
        return "tunelib.models.from_hf_config", extra
    return f"tunelib.models.{family}.{name}", extra


def adapter_key(key: str) -> bool:
    """Whether a model node key is one of the adapter keys every tunelib builder takes (the rest of a
    generic builder's keys are sizes, which config.json holds)."""
    return key.startswith(("lora_", "apply_lora_")) or key in ("use_dora", "quantize_base")


def translate(node: str, key: str, value):
    """torchtune's value of `node.key` in tunelib's terms (components and module names)."""
    if key == "_component_" and node == "optimizer":
        return OPTIMIZERS.get(value, value)
    if key == "_component_" and value.startswith("torchtune.datasets."):
        return "tunelib.data." + value.rsplit(".", 1)[1]
    if key == "_component_" and value.startswith("torchtune.training.lr_schedulers."):
        return "tunelib.training." + value.rsplit(".", 1)[1]
    if key == "_component_" and value.startswith("torchtune.training.quantization."):
        return "tunelib.quantization." + value.rsplit(".", 1)[1].removesuffix("ModuleSwap")
    if key == "_component_" and node in ("loss", "kd_loss") and value.startswith("torchtune."):
        return equivalent(value).path  # torchtune.rlhf.loss.DPOLoss -> tunelib.training.DPOLoss
    if key == "_component_" and node == "teacher_model":
        return tunelib_builder({"model": value.rsplit(".", 1)[1], "checkpoint_dir": ""})[0]
    if key == "lora_attn_modules":
        return ["o_proj" if m == "output_proj" else m for m in value]
    return value


def node_lines(node: str, settings: dict, extra: list[str] = ()) -> list[str]:
    """The YAML lines of one component node (`model`, `dataset`, ...) from torchtune's flat keys."""
    keys = [k.split(".", 1)[1] for k in settings if k.startswith(node + ".")]
    keys.sort(key=lambda k: k != "_component_")
    out = [f"{node}:"]
    component = str(translate(node, "_component_", settings[f"{node}._component_"]))
    for key in keys:
        value = translate(node, key, settings[f"{node}.{key}"])
        if key == "fused" and not component.startswith("torch."):
            continue  # torchao's optimizers take no `fused`
        out.append(f"  {key}: {yaml_value(value)}")
    return out + [f"  {line}" for line in extra]


def hf_folder(entry: dict) -> str:
    """The HF model folder: torchtune's Meta-format configs point into its `original/` subfolder."""
    return entry["checkpoint_dir"].removesuffix("/original")


def torchtune_header(name: str, entry: dict) -> str:
    where = "torchtune's main branch" if entry["version"] == "main" else f"torchtune {entry['version']}"
    folder, recipe = hf_folder(entry), entry["recipe"]
    same = ("tasks and settings" if recipe == "eleuther_eval"
            else "data, schedule, adapter settings, batch sizes and memory options")
    lines = [f"# {name}: the config of this name in {where}, with tunelib's components",
             f"# and the same {same} (docs/configs.md).", "#"]
    if entry["download"]:
        lines.append(f"#   tune download {entry['download']} --output-dir {folder}")
    lines += [f"#   tune download {line.strip()}" for line in entry.get("downloads", [])]
    lines.append(f"#   tune run {recipe} --config {name}")
    return "\n".join(lines) + "\n"


def torchtune_body(entry: dict) -> str:
    """One torchtune config in tunelib's native form."""
    settings, folder = entry["settings"], hf_folder(entry)
    top = [k for k in settings if "." not in k and written(entry["recipe"], k, settings[k])]
    lines = [f"output_dir: {entry['output_dir'].replace('/tmp/torchtune/', '/tmp/tunelib/')}",
             f"checkpoint_dir: {folder}", ""]
    if entry["recipe"] == "eleuther_eval":  # lm-eval writes no output_dir: output_path says where, if anywhere
        return "\n".join(lines[1:] + [f"{k}: {yaml_value(settings[k])}" for k in top]) + "\n"
    builder, extra = tunelib_builder(entry)
    if builder == "tunelib.models.from_hf_config":
        settings = {k: v for k, v in settings.items() if not k.startswith("model.") or adapter_key(k[6:])}
    rel = entry["tokenizer_path"].removeprefix(folder).strip("/")
    tok_path = "${checkpoint_dir}" + (f"/{rel}" if rel.endswith(".model") else "")
    lines += [*node_lines("model", {**settings, "model._component_": builder}, extra),
              "tokenizer:", f"  _component_: tunelib.tokenizers.{entry['tokenizer']}", f"  path: {tok_path}",
              f"  max_seq_len: {yaml_value(settings.get('tokenizer.max_seq_len'))}",
              "checkpointer:", "  _component_: tunelib.training.HFCheckpointer",
              "  checkpoint_dir: ${checkpoint_dir}", "  output_dir: ${output_dir}", ""]
    for node in ("dataset", "dataset_val", "optimizer", "lr_scheduler", "quantizer", "loss", "kd_loss", "teacher_model"):
        if f"{node}._component_" in settings:
            lines += node_lines(node, settings)
    return "\n".join(lines + ["", *(f"{k}: {yaml_value(settings[k])}" for k in top)]) + "\n"


def torchtune_configs() -> dict[Path, str]:
    """torchtune's configs under torchtune's names: path -> text."""
    return {ROOT / f"{name}.yaml": torchtune_header(name, entry) + "\n" + torchtune_body(entry)
            for name, entry in torchtune_table().items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report configs that differ")
    args = parser.parse_args(argv)
    wanted = configs()
    differ = [p for p, text in wanted.items() if not p.is_file() or p.read_text() != text]
    folders = {p.parent for p in wanted}  # only the generated families: demo/ is written by hand
    stale = [p for folder in sorted(folders) for p in folder.glob("*.yaml") if p not in wanted]
    if args.check:
        for path in differ:
            print(f"out of date: {path.relative_to(ROOT.parent.parent)}")
        for path in stale:
            print(f"not generated: {path.relative_to(ROOT.parent.parent)}")
        return 1 if differ or stale else 0
    for path in differ:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(wanted[path])
    for path in stale:
        path.unlink()
    print(f"wrote {len(differ)} of {len(wanted)} configs, removed {len(stale)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
