"""Build a recipe's objective from its config, with the frozen models it needs.

A recipe names one of these builders; `tunelib.training.setup.build_run` calls it once the
trained model, its data and its process are ready, passing `Parts`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from omegaconf import ListConfig

from tunelib.checkpoint import writes
from tunelib.config import instantiate
from tunelib.data import collate_pairs
from tunelib.errors import CheckpointError, ConfigError
from tunelib.training.distillation_loss import ForwardKLLoss, JSDLoss, ReverseKLLoss, SymmetricKLLoss
from tunelib.training.distributed import Dist
from tunelib.training.loop import to_device
from tunelib.training.loss import LinearCrossEntropyLoss
from tunelib.training.objectives import Distillation, NextToken, Preference
from tunelib.training.objectives.reference import AdaptersOff, FrozenModel, Precomputed, precompute
from tunelib.training.preference_loss import DPOLoss, HingeLoss, IPOLoss, ORPOLoss, SimPOLoss
from tunelib.training.trained import Trained

# Kept in output_dir beside the checkpoints: a resumed run reads it instead of recomputing.
REFERENCE_TABLE = "reference_log_probs.pt"
REFERENCE = "reference model"  # Cost's label of full DPO's frozen reference copy


@dataclass
class Parts:
    """What an objective builder may use.

    frozen(node, folder) builds the model of config node `node` with the weights of `folder`,
    frozen, transformed and sharded like the trained one (a teacher or a reference model).
    """

    model: torch.nn.Module
    trains: Trained
    loader: Any
    dist: Dist
    device: torch.device
    fresh: bool  # not a resume: the trained model is still the starting one
    frozen: Callable[[Any, str], torch.nn.Module]


@dataclass
class Cost:
    """What an objective adds to a step beyond cross-entropy on batch_size rows, for
    tunelib.training.estimate: the memory and time a run will need, before it loads anything.

    sequences: sequences per row of batch_size (a chosen/rejected pair is 2).
    frozen: a label -> a frozen model on the meta device, held beside the trained one (a teacher,
        DPO's reference copy); its forward runs on every batch without gradients.
    reference_forwards: forwards of the trained model itself without gradients (DPO's reference
        with the adapters switched off).
    """

    sequences: int = 1
    frozen: dict[str, torch.nn.Module] = field(default_factory=dict)
    reference_forwards: int = 0


def cost(cfg, builder: Callable, trains: Trained) -> Cost:
    """What the objective that `builder` (a recipe's objective) makes adds to each step, as `Cost` says.

    Raises:
        ConfigError: a frozen model's folder is not set, or has no config.json for a model whose
            shape comes from it.
    """
    if builder is preference:
        loss = preference_loss(cfg)
        if not loss.needs_reference or cfg.precompute_reference_log_probs:
            return Cost(sequences=2)
        if trains.adapters:
            return Cost(sequences=2, reference_forwards=1)
        return Cost(sequences=2, frozen={REFERENCE: meta_model(cfg.model, reference_folder(cfg))})
    if builder is distillation:
        return Cost(frozen={"teacher": meta_model(cfg.teacher_model, teacher_folder(cfg))})
    return Cost()


def meta_model(node, folder: str) -> torch.nn.Module:
    """The model of config node `node` for `folder` on the meta device, no weight read.

    Raises:
        ConfigError: the builder reads its shape from folder's config.json, and it is not there.
    """
    if "from_hf_config" in str(node._component_) and not (Path(folder) / "config.json").is_file():
        raise ConfigError(f"{folder} has no config.json, and the model's shape comes from it: "
                          f"`tune download REPO_ID --output-dir {folder}` first")
    return instantiate(node, checkpoint_dir=folder)


def built(node, key: str, *args, **kwargs):
    """Build a component; its own refusal of a value (torch.optim's "Invalid learning rate: -1")
    becomes a one-line error naming the config key."""
    try:
        return instantiate(node, *args, **kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{key} ({node._component_}) refused its settings: {str(e).splitlines()[0]}") from None


def cross_entropy(cfg) -> LinearCrossEntropyLoss:
    """The `loss` node of a cross-entropy objective (default: LinearCrossEntropyLoss).

    Raises:
        ConfigError: the node is a preference or distillation loss, which belongs to another recipe.
    """
    loss = LinearCrossEntropyLoss() if cfg.loss is None else built(cfg.loss, "loss")
    if isinstance(loss, (DPOLoss, IPOLoss, HingeLoss, SimPOLoss, ORPOLoss)):
        raise ConfigError(f"loss {cfg.loss._component_} compares chosen and rejected answers; run "
                          "lora_dpo_single_device or full_dpo_single_device with it (this recipe's loss is "
                          "cross-entropy)")
    if isinstance(loss, (ForwardKLLoss, ReverseKLLoss, SymmetricKLLoss, JSDLoss)):
        raise ConfigError(f"loss {cfg.loss._component_} is a distillation divergence; set it as kd_loss of "
                          "knowledge_distillation_single_device (this recipe's loss is cross-entropy)")
    return loss


def next_token(cfg, parts: Parts | None) -> NextToken:
    """Supervised fine-tuning (`parts` is None when `tune validate` only checks the config).

    Raises:
        ConfigError: the data is preference pairs (cross-entropy would train the rejected answers too).
    """
    if (_is_pairs(parts.loader.dataset) if parts is not None else _names_pairs(cfg)) is True:
        raise ConfigError("the dataset is preference pairs (chosen/rejected), which supervised fine-tuning would "
                          "train both sides of; run lora_dpo_single_device or full_dpo_single_device, or use SFT data")
    return NextToken(cross_entropy(cfg))


def _is_pairs(dataset) -> bool:
    return getattr(dataset, "collate", None) is collate_pairs


# tunelib's builders of preference pairs; tunelib.data's others build SFT rows.
PAIR_BUILDERS = {"preference_dataset", "stack_exchange_paired_dataset", "hh_rlhf_helpful_dataset"}


def _names_pairs(cfg) -> bool | None:
    """Whether the config's dataset builders (tunelib's own) make preference pairs, before any data
    is read (for `tune validate`); None when a user's own builder leaves it open."""
    nodes = list(cfg.dataset) if isinstance(cfg.dataset, (list, ListConfig)) else [cfg.dataset]
    kinds = set()
    for node in nodes:
        path = str(node.get("_component_", ""))
        if not path.startswith("tunelib.data."):
            return None
        kinds.add(path.rsplit(".", 1)[1] in PAIR_BUILDERS)
    return kinds.pop() if len(kinds) == 1 else None


def preference_loss(cfg):
    """The `loss` node of a preference recipe (default: DPOLoss with beta 0.1).

    Raises:
        ConfigError: the node is not a preference loss.
    """
    loss = DPOLoss() if cfg.loss is None else built(cfg.loss, "loss")
    if not hasattr(loss, "needs_reference"):
        raise ConfigError(f"loss {cfg.loss._component_} is not a preference loss; use tunelib.training.DPOLoss, "
                          "IPOLoss, HingeLoss, SimPOLoss or ORPOLoss (torchtune.rlhf.loss.DPOLoss works too)")
    return loss


def preference(cfg, parts: Parts | None) -> Preference:
    """DPO and its relatives; the reference model chosen as docs/methods.md says."""
    loss = preference_loss(cfg)
    if parts is None:
        if _names_pairs(cfg) is False:
            raise ConfigError("a preference recipe trains on chosen/rejected pairs, but dataset is not preference "
                              "data; use tunelib.data.preference_dataset (or stack_exchange_paired_dataset, "
                              "hh_rlhf_helpful_dataset)")
        return Preference(loss, None)
    if not _is_pairs(parts.loader.dataset):
        raise ConfigError("a preference recipe trains on chosen/rejected pairs, but dataset is not preference data; "
                          "use tunelib.data.preference_dataset (or stack_exchange_paired_dataset, "
                          "hh_rlhf_helpful_dataset)")
    reference = None
    if loss.needs_reference and cfg.precompute_reference_log_probs:
        reference = Precomputed(_reference_table(cfg, parts))
    elif loss.needs_reference and parts.trains.adapters:
        reference = AdaptersOff()
    elif loss.needs_reference:
        reference = FrozenModel(parts.frozen(cfg.model, reference_folder(cfg)))
    return Preference(loss, reference)


def reference_folder(cfg) -> str:
    """The full DPO reference's folder: reference_checkpoint_dir, torchtune's
    ref_checkpointer.checkpoint_dir, or checkpoint_dir (the starting weights)."""
    return _one_folder(cfg, "reference_checkpoint_dir", "ref_checkpointer") or cfg.checkpoint_dir


def _one_folder(cfg, key: str, node_key: str) -> str | None:
    """cfg[key] or cfg[node_key].checkpoint_dir (torchtune's form of it).

    Raises:
        ConfigError: both are set and differ.
    """
    value, node = cfg.get(key), cfg.get(node_key)
    named = None if node is None else node.get("checkpoint_dir")
    if value is not None and named is not None and Path(value).resolve() != Path(named).resolve():
        raise ConfigError(f"{key}={value} and {node_key}.checkpoint_dir={named} differ; keep one")
    return None if value is None and named is None else str(value or named)


def _reference_table(cfg, parts: Parts) -> torch.Tensor:
    """The reference log-probs of every training pair: read from output_dir, or computed now, once,
    with the starting weights (each process its share, summed over processes) and kept there.

    Raises:
        CheckpointError: a resumed full fine-tuning run whose table is gone (its weights have moved on).
    """
    path = Path(cfg.output_dir) / REFERENCE_TABLE
    dataset, dist = parts.loader.dataset, parts.dist
    key = _data_key(dataset)
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved["data"] == key:
            return saved["table"].to(parts.device)
    if not parts.fresh and not parts.trains.adapters:
        raise CheckpointError(f"{path} is missing or was made for other data, and this resumed run's weights are no "
                              "longer the reference; restore the file, or start over with resume_from_checkpoint=False")
    # Before the first step the policy is the reference (with adapters, once they are switched off),
    # unless another folder is named; that model is held only while the table is made.
    if parts.trains.adapters:
        reference = AdaptersOff()
    elif Path(reference_folder(cfg)).resolve() != Path(cfg.checkpoint_dir).resolve():
        reference = FrozenModel(parts.frozen(cfg.model, reference_folder(cfg)))
    else:
        reference = FrozenModel(parts.model)
    pairs = len(dataset)
    table = precompute(lambda batch: reference(parts.model, batch), _share(parts, cfg.batch_size), pairs, parts.device)
    owned = torch.arange(pairs, device=parts.device) % dist.world_size == dist.rank
    table = dist.device_sum(table * owned[:, None])  # a pair repeated to even out the shares counts once
    if dist.is_main:
        writes.torch_save({"data": key, "table": table.cpu()}, path)
    dist.barrier()
    return table


def _share(parts: Parts, batch_size: int):
    """This process's batches of pairs r, r + world_size, ...: as many batches on every process (a
    sharded forward needs all of them), the shorter shares padded with their own last pair."""
    dist, pairs = parts.dist, len(parts.loader.dataset)
    mine = list(range(dist.rank, pairs, dist.world_size)) or [0]
    per_rank = -(-pairs // dist.world_size)
    mine += mine[-1:] * (per_rank - len(mine))
    for i in range(0, per_rank, batch_size):
        yield to_device(parts.loader.collate_items(mine[i:i + batch_size]), parts.device, None)


def _data_key(dataset) -> str:
    """A fingerprint of the tokenized pairs, so a table made for other data is never used."""
    digest = hashlib.sha256(str(len(dataset)).encode())
    for i in range(len(dataset)):
        for key, value in sorted(dataset[i].items()):
            digest.update(key.encode() + np.asarray(value, dtype=np.int64).tobytes())
    return digest.hexdigest()


def distillation(cfg, parts: Parts | None) -> Distillation:
    """Cross-entropy mixed with a divergence from the teacher of teacher_model/teacher_checkpoint_dir."""
    kd = ForwardKLLoss() if cfg.kd_loss is None else built(cfg.kd_loss, "kd_loss")
    folder = teacher_folder(cfg)
    if parts is None:
        return Distillation(cross_entropy(cfg), kd, cfg.kd_ratio, None)
    check_same_vocabulary(cfg.checkpoint_dir, folder)
    teacher = parts.frozen(cfg.teacher_model, folder)
    if teacher.config.vocab_size != parts.model.config.vocab_size:
        raise ConfigError(f"the teacher's vocabulary has {teacher.config.vocab_size} entries and the student's "
                          f"{parts.model.config.vocab_size}; distillation compares them token by token, so they must "
                          "share one tokenizer")
    return Distillation(cross_entropy(cfg), kd, cfg.kd_ratio, teacher)


def teacher_folder(cfg) -> str:
    """teacher_checkpoint_dir, or torchtune's teacher_checkpointer.checkpoint_dir.

    Raises:
        ConfigError: neither is set, or both are and differ.
    """
    folder = _one_folder(cfg, "teacher_checkpoint_dir", "teacher_checkpointer")
    if folder is None:
        raise ConfigError("distillation needs the teacher's weights: set teacher_checkpoint_dir=FOLDER")
    return folder


# Tokenizer files that fix a vocabulary, in the order they are compared.
_VOCABULARY_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "original/tokenizer.model")


def check_same_vocabulary(student: str, teacher: str) -> None:
    """Refuse a teacher whose tokenizer files differ from the student's (when both folders have one).

    Raises:
        ConfigError: naming the file that differs.
    """
    for name in _VOCABULARY_FILES:
        a, b = Path(student) / name, Path(teacher) / name
        if a.is_file() and b.is_file():
            if _vocabulary(a) != _vocabulary(b):
                raise ConfigError(f"the teacher's {name} ({b}) differs from the student's ({a}): distillation compares "
                                  "the two models token by token, so they must share one tokenizer")
            return


def _vocabulary(path: Path):
    if path.name == "tokenizer.json":
        data = json.loads(path.read_text())
        added = sorted((t["id"], t["content"]) for t in data.get("added_tokens", []))
        return data.get("model", {}).get("vocab"), added
    return hashlib.sha256(path.read_bytes()).hexdigest()
