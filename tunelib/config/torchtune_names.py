"""torchtune's `_component_` names, understood through one table.

A torchtune config names `torchtune.models.llama3_1.qlora_llama3_1_8b`,
`torchtune.training.FullModelHFCheckpointer` and so on. Each such path stands for a tunelib
path plus the arguments the torchtune name implies (a `qlora_*` builder is the plain builder
with `quantize_base=True`) and, where torchtune spells an argument differently, the tunelib
spelling. The config checks and `instantiate` translate a node before they look at it, so the
allow-list applies to what a name translates *to*; `tune migrate` rewrites a file with the same
table.

The model and tokenizer rows are generated from tunelib's own registries (every family and
size), imported by name when a torchtune path is first seen, so this module does not import
torch. A torchtune path with no equivalent is refused in one line saying what to use instead.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from dataclasses import dataclass, field
from typing import Any

from tunelib.errors import ConfigError

TORCHTUNE = "torchtune."


@dataclass(frozen=True)
class Equivalent:
    """What a torchtune path means in tunelib."""

    path: str  # the tunelib (or third-party) path to build
    fixed: dict[str, Any] = field(default_factory=dict)  # arguments the torchtune name implies
    renamed: dict[str, str] = field(default_factory=dict)  # torchtune argument name -> tunelib's


# Optimizers torchtune's configs name outside torchtune. Each exact path is trusted like the
# allow-list's modules once its package is installed; otherwise the error names what to use.
THIRD_PARTY = {
    "bitsandbytes.optim.PagedAdamW8bit": "torchao.optim.AdamW8bit",
    "bitsandbytes.optim.PagedAdamW": "torch.optim.AdamW",
    "bitsandbytes.optim.AdamW8bit": "torchao.optim.AdamW8bit",
    "bitsandbytes.optim.PagedAdamW32bit": "torch.optim.AdamW",
}

# torchtune paths with one tunelib equivalent taking the same arguments.
_ONE_TO_ONE = {
    "torchtune.training.FullModelHFCheckpointer": "tunelib.training.HFCheckpointer",
    "torchtune.modules.loss.CEWithChunkedOutputLoss": "tunelib.training.LinearCrossEntropyLoss",
    "torchtune.modules.loss.LinearCrossEntropyLoss": "tunelib.training.LinearCrossEntropyLoss",
    "torchtune.training.lr_schedulers.get_cosine_schedule_with_warmup": "tunelib.training.get_cosine_schedule_with_warmup",
    "torchtune.modules.get_cosine_schedule_with_warmup": "tunelib.training.get_cosine_schedule_with_warmup",
    "torchtune.training.metric_logging.DiskLogger": "tunelib.training.DiskLogger",
    "torchtune.training.metric_logging.StdoutLogger": "tunelib.training.StdoutLogger",
    "torchtune.training.metric_logging.TensorBoardLogger": "tunelib.training.TensorBoardLogger",
    "torchtune.training.metric_logging.WandBLogger": "tunelib.training.WandBLogger",
    "torchtune.training.setup_torch_profiler": "tunelib.training.setup_torch_profiler",
    # Preference losses: torchtune 0.6.1 has DPOLoss and RSOLoss (the hinge loss, `gamma` as ours);
    # SimPOLoss (0.3 to 0.5) and IPOLoss (before 0.3.1; it summed log-probs, ours averages them per token
    # as TRL does) were removed there but old configs name them.
    "torchtune.rlhf.loss.DPOLoss": "tunelib.training.DPOLoss",
    "torchtune.rlhf.loss.RSOLoss": "tunelib.training.HingeLoss",
    "torchtune.rlhf.loss.SimPOLoss": "tunelib.training.SimPOLoss",
    "torchtune.rlhf.loss.IPOLoss": "tunelib.training.IPOLoss",
    # Distillation losses: ours always work in chunks (num_output_chunks), and report true KL (see
    # tunelib.training.distillation_loss: forward KL differs from torchtune's by the teacher's entropy).
    "torchtune.modules.loss.ForwardKLLoss": "tunelib.training.ForwardKLLoss",
    "torchtune.modules.loss.ForwardKLWithChunkedOutputLoss": "tunelib.training.ForwardKLLoss",
    "torchtune.modules.loss.ReverseKLLoss": "tunelib.training.ReverseKLLoss",
    "torchtune.modules.loss.ReverseKLWithChunkedOutputLoss": "tunelib.training.ReverseKLLoss",
    # Quantizers (QAT recipes, `tune run quantize`); the ModuleSwap names are torchao's old aliases.
    "torchtune.training.quantization.Int8DynActInt4WeightQATQuantizer":
        "tunelib.quantization.Int8DynActInt4WeightQATQuantizer",
    "torchtune.training.quantization.Int8DynActInt4WeightQATQuantizerModuleSwap":
        "tunelib.quantization.Int8DynActInt4WeightQATQuantizer",
    "torchtune.training.quantization.Int8DynActInt4WeightQuantizer": "tunelib.quantization.Int8DynActInt4WeightQuantizer",
    "torchtune.training.quantization.Int4WeightOnlyQATQuantizer": "tunelib.quantization.Int4WeightOnlyQATQuantizer",
    "torchtune.training.quantization.Int4WeightOnlyQATQuantizerModuleSwap":
        "tunelib.quantization.Int4WeightOnlyQATQuantizer",
    "torchtune.training.quantization.Int4WeightOnlyQuantizer": "tunelib.quantization.Int4WeightOnlyQuantizer",
}
# torchtune paths whose tunelib equivalent spells an argument differently: path -> (ours, renames).
_RENAMED = {
    "torchtune.modules.loss.SymmetricKLLoss": ("tunelib.training.SymmetricKLLoss", {"sym_kd_ratio": "sym_kl_ratio"}),
    "torchtune.modules.loss.SymmetricKLWithChunkedOutputLoss": ("tunelib.training.SymmetricKLLoss",
                                                                {"sym_kd_ratio": "sym_kl_ratio"}),
}
# torchtune.datasets.<name> -> tunelib.data.<name>: the builders both have, with the same arguments.
_DATASETS = ("alpaca_dataset", "alpaca_cleaned_dataset", "text_completion_dataset", "chat_dataset",
             "instruct_dataset", "preference_dataset", "stack_exchange_paired_dataset", "hh_rlhf_helpful_dataset")
# Models torchtune has that tunelib builds from the folder's config.json (no named sizes of their own).
_FROM_FOLDER = {"code_llama2": ("7b", "13b", "70b")}
# Families whose torchtune builders also come as <name>_base and <name>_instruct.
_BASE_AND_INSTRUCT = ("qwen2_5", "qwen3")
# torchtune's module names in lora_attn_modules -> Hugging Face's, which tunelib's own configs use
# (the adapter code accepts both).
MODULE_NAMES = {"output_proj": "o_proj"}
# torchtune's tokenizer arguments that tunelib spells differently (phi4_tokenizer's).
_TOKENIZER_RENAMES = {"vocab_path": "path", "merges_path": "merges_file"}

# Prefix -> why there is no equivalent and what to use instead. Longest prefix wins.
UNSUPPORTED = {
    "torchtune.models.llama4": "Llama 4 (mixture of experts, vision) is not supported; use a Llama 3.x text model, "
                               "e.g. torchtune.models.llama3_1.lora_llama3_1_8b",
    "torchtune.models.llama3_2_vision": "vision models are not supported; use the text model "
                                        "torchtune.models.llama3_2.lora_llama3_2_3b",
    "torchtune.models.qwen2_5_vision": "vision models are not supported; use torchtune.models.qwen2_5.lora_qwen2_5_7b_instruct",
    "torchtune.models.clip": "vision encoders are not supported; tunelib fine-tunes text decoders",
    "torchtune.models.flux": "image models are not supported; tunelib fine-tunes text decoders",
    "torchtune.models.t5": "encoder-decoder models are not supported; tunelib fine-tunes text decoders",
    "torchtune.models.mistral._component_builders.mistral_classifier": "reward (classifier) models are not "
                                                                       "supported; PPO is not a tunelib recipe",
    "torchtune.models.mistral.mistral_reward": "reward models are not supported; PPO is not a tunelib recipe",
    "torchtune.models.mistral.lora_mistral_reward": "reward models are not supported; PPO is not a tunelib recipe",
    "torchtune.models.llama3.base_llama_tp_plan": "tensor parallelism is not supported; distributed runs shard "
                                                  "with FSDP2 (remove tensor_parallel_plan)",
    "torchtune.models.llama4.decoder_only_tp_plan": "tensor parallelism is not supported; distributed runs shard with FSDP2",
    "torchtune.datasets.multimodal": "multimodal datasets are not supported; use a text dataset such as "
                                     "torchtune.datasets.alpaca_cleaned_dataset",
    "torchtune.training.quantization": "tunelib has torchtune's int8-activation/int4-weight and int4 weight-only "
                                       "quantizers only: torchtune.training.quantization."
                                       "Int8DynActInt4WeightQATQuantizer or Int4WeightOnlyQATQuantizer",
    "torchtune.training.FullModelMetaCheckpointer": "Meta-format checkpoints (original/consolidated.00.pth) are "
                                                    "not read; use torchtune.training.FullModelHFCheckpointer with "
                                                    "checkpoint_dir the Hugging Face folder above original/ "
                                                    "(config.json, *.safetensors) and no checkpoint_files",
    "torchtune.training.FullModelTorchTuneCheckpointer": "torchtune's own checkpoint format is not read; use "
                                                         "torchtune.training.FullModelHFCheckpointer on a Hugging "
                                                         "Face model folder",
    "torchtune.training.DistributedCheckpointer": "distributed (DCP) checkpoints are not read; use "
                                                  "torchtune.training.FullModelHFCheckpointer",
    "torchtune.training.metric_logging.CometLogger": "Comet is not supported; use "
                                                     "torchtune.training.metric_logging.WandBLogger or TensorBoardLogger",
    "torchtune.training.metric_logging.MLFlowLogger": "MLflow is not supported; use "
                                                      "torchtune.training.metric_logging.WandBLogger or TensorBoardLogger",
    "torchtune.rlhf": "PPO and GRPO are not tunelib recipes; preference tuning is DPO (lora_dpo_single_device) "
                      "with loss torchtune.rlhf.loss.DPOLoss or tunelib.training.DPOLoss, IPOLoss, HingeLoss, "
                      "SimPOLoss, ORPOLoss",
}


def is_torchtune(path: Any) -> bool:
    """Whether `path` is a name the table is asked about (torchtune's, or a third party's it lists)."""
    return isinstance(path, str) and (path.startswith(TORCHTUNE) or path in THIRD_PARTY)


def equivalent(path: str, where: str = "_component_") -> Equivalent:
    """tunelib's equivalent of a torchtune (or listed third-party) path.

    Raises:
        ConfigError: one line: the path has no equivalent (and what to use instead), is not in
            the table, or names a third-party package that is not installed.
    """
    if path in THIRD_PARTY:
        return _third_party(path, where)
    found = table().get(path)
    if found is not None:
        return found
    reason = _unsupported(path)
    if reason is not None:
        raise ConfigError(f"{where}: {path} is not supported: {reason}")
    raise ConfigError(f"{where}: {path} is a torchtune name tunelib does not know; write a tunelib component "
                      f"instead, {_instead(path)} (docs/configs.md, \"torchtune's names\")")


def _third_party(path: str, where: str) -> Equivalent:
    package = path.split(".")[0]
    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"{where}: {path} needs {package}, which is not installed: pip install {package}, "
                          f"or use {THIRD_PARTY[path]}")
    return Equivalent(path)


def _unsupported(path: str) -> str | None:
    matches = [p for p in UNSUPPORTED if path == p or path.startswith(p + ".") or path.startswith(p + "_")]
    return UNSUPPORTED[max(matches, key=len)] if matches else None


# What to write for a torchtune path the table lacks, by where it lives.
_INSTEAD = {
    "torchtune.models.": "e.g. tunelib.models.from_hf_config (any supported model folder) or "
                         "tunelib.tokenizers.from_pretrained",
    "torchtune.datasets.": "e.g. tunelib.data.instruct_dataset or tunelib.data.chat_dataset with its source",
    "torchtune.modules.loss.": "e.g. tunelib.training.LinearCrossEntropyLoss",
    "torchtune.training.lr_schedulers.": "e.g. tunelib.training.get_linear_schedule_with_warmup",
}


def _instead(path: str) -> str:
    return next((hint for prefix, hint in _INSTEAD.items() if path.startswith(prefix)),
                "e.g. from tunelib.training (see `tune run RECIPE --help`)")


def trusted_module(path: str) -> str | None:
    """The package a listed third-party path may come from (so the allow-list lets that one path in)."""
    return path.split(".")[0] if path in THIRD_PARTY else None


@functools.cache
def table() -> dict[str, Equivalent]:
    """Every torchtune path tunelib understands -> its equivalent."""
    rows = {path: Equivalent(ours) for path, ours in _ONE_TO_ONE.items()}
    rows.update({path: Equivalent(ours, renamed=dict(renames)) for path, (ours, renames) in _RENAMED.items()})
    rows.update({f"torchtune.datasets.{name}": Equivalent(f"tunelib.data.{name}") for name in _DATASETS})
    rows.update(_model_rows())
    rows.update(_tokenizer_rows())
    return rows


# tunelib families whose builders torchtune keeps in another family's package.
_TORCHTUNE_PACKAGE = {"qwen3_moe": "qwen3"}


def _model_rows() -> dict[str, Equivalent]:
    """torchtune.models.<family>.{,lora_,qlora_}<builder>: one per tunelib builder, and the variants torchtune names."""
    registry = importlib.import_module("tunelib.models.registry")
    rows: dict[str, Equivalent] = {}
    for name, builder in registry.builders().items():
        family = _TORCHTUNE_PACKAGE.get(builder.__module__.rsplit(".", 1)[1], builder.__module__.rsplit(".", 1)[1])
        variants = [name] + ([f"{name}_base", f"{name}_instruct"] if family in _BASE_AND_INSTRUCT else [])
        for variant in variants:
            rows.update(_three_builders(family, variant, f"{builder.__module__}.{name}"))
    for family, sizes in _FROM_FOLDER.items():
        for size in sizes:
            rows.update(_three_builders(family, f"{family}_{size}", "tunelib.models.from_hf_config"))
    return rows


def _three_builders(family: str, name: str, ours: str) -> dict[str, Equivalent]:
    # torchtune's lora_* builders take the adapter keys tunelib's builders take; qlora_* fixes quantize_base.
    base = f"torchtune.models.{family}."
    return {base + name: Equivalent(ours), base + f"lora_{name}": Equivalent(ours),
            base + f"qlora_{name}": Equivalent(ours, fixed={"quantize_base": True})}


def _tokenizer_rows() -> dict[str, Equivalent]:
    """torchtune.models.<family>.<name>_tokenizer -> tunelib.tokenizers.<name>_tokenizer."""
    tokenizers = importlib.import_module("tunelib.tokenizers")
    registry = importlib.import_module("tunelib.models.registry")
    families = sorted({b.__module__.rsplit(".", 1)[1] for b in registry.builders().values()}, key=len, reverse=True)
    rows = {}
    for name in (n for n in dir(tokenizers) if n.endswith("_tokenizer") and not n.startswith("_")):
        family = next((f for f in families if name.startswith(f + "_")), None)
        if family is not None:
            rows[f"torchtune.models.{family}.{name}"] = Equivalent(f"tunelib.tokenizers.{name}",
                                                                   renamed=dict(_TOKENIZER_RENAMES))
    return rows


def translate_node(node: dict, where: str = "config") -> dict:
    """A component node with a torchtune `_component_` rewritten to tunelib's (others unchanged).

    Renamed arguments take tunelib's spelling and the arguments the name implies are added.

    Raises:
        ConfigError: the path has no equivalent, or the node sets an implied argument to
            another value (a qlora_* builder with quantize_base: False).
    """
    path = node.get("_component_")
    if not is_torchtune(path):
        return node
    found = equivalent(path, f"{where}._component_")
    out = {"_component_": found.path}
    for key, value in node.items():
        if key != "_component_":
            out[found.renamed.get(key, key)] = value
    for key, value in found.fixed.items():
        if key in out and out[key] != value:
            raise ConfigError(f"{where}.{key}={out[key]} contradicts {path}, which means {key}={value}; "
                              f"remove {key} or use the builder without the q prefix")
        out[key] = value
    return out


def fill_checkpoint_dir(cfg, fields: dict) -> None:
    """Let `checkpointer.checkpoint_dir` stand for a missing top-level `checkpoint_dir`.

    torchtune's files name the model folder only inside the checkpointer; tunelib's settings
    (and the model builder) read the top-level key, which then refers to it. When both are
    given, the schema's value rules require them to name the same folder.
    """
    node = cfg.get("checkpointer")
    if "checkpoint_dir" in fields and "checkpoint_dir" not in cfg and hasattr(node, "keys") \
            and "checkpoint_dir" in node:
        cfg["checkpoint_dir"] = "${checkpointer.checkpoint_dir}"
