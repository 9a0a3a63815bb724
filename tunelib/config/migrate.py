"""Rewrite a torchtune config file into tunelib's native form, saying what changed.

tunelib runs torchtune's files as they are (see `torchtune_names`); this turns one into the
form tunelib's own configs have, with the same table: tunelib `_component_` paths, the
arguments a torchtune name implies written out, tunelib's argument names, one top-level
`checkpoint_dir`, and torchtune's keys that only restate what the model folder says removed.
The text is edited in place, so comments and the order of keys stay.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from tunelib.config import torchtune_names
from tunelib.errors import ConfigError

CHECKPOINTER = "tunelib.training.HFCheckpointer"
# Checkpointer keys that restate the folder (its index, its config.json): checks only, so the
# native form leaves them out and a re-downloaded or resharded folder still matches.
_RESTATED = {"checkpoint_files": "tunelib reads the weight files the folder's index names",
             "model_type": "the folder's config.json says what the model is"}
_NULL_ONLY = ("recipe_checkpoint", "adapter_checkpoint")
_TOP_LEVEL = {"low_cpu_ram": "tunelib always loads weights with little CPU memory",
              "custom_sharded_layers": "the embedding and output layer are always sharded on their own"}


@dataclass
class Migration:
    """The rewritten text and one line per change."""

    text: str
    changes: list[str] = field(default_factory=list)


def migrate(text: str, name: str = "config") -> Migration:
    """Rewrite torchtune config `text` (a YAML file named `name` in messages).

    Raises:
        ConfigError: the text is not a YAML mapping, or names a torchtune component with no
            tunelib equivalent (one line saying what to use instead).
    """
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{name} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(root, MappingNode):
        raise ConfigError(f"{name} must be a YAML mapping of config keys")
    edits = _Edits(text)
    _walk(root, "", edits)
    _top_level(root, edits)
    return Migration(edits.apply(), edits.changes)


class _Edits:
    """Replacements of character ranges of the text, applied together at the end."""

    def __init__(self, text: str):
        self.text, self.spans, self.changes = text, [], []

    def replace(self, node: Node, new: str, change: str) -> None:
        self.spans.append((node.start_mark.index, node.end_mark.index, new))
        self.changes.append(change)

    def remove_entry(self, key: Node, value: Node, change: str) -> None:
        start = self.text.rfind("\n", 0, key.start_mark.index) + 1
        self.spans.append((start, self._entry_end(value), ""))
        self.changes.append(change)

    def add_entry_after(self, key: Node, value: Node, entry: str, change: str) -> None:
        """Add `entry` (`key: value`) as a sibling after the entry `key: value`, at its indentation."""
        end = self._entry_end(value)
        prefix = "" if end == 0 or self.text[end - 1] == "\n" else "\n"
        self.spans.append((end, end, prefix + " " * key.start_mark.column + entry + "\n"))
        self.changes.append(change)

    def _entry_end(self, value: Node) -> int:
        """Where the line(s) of an entry whose value is `value` end: a block value's end mark is
        the next key's position, a scalar's is inside its line (a comment may follow)."""
        end = value.end_mark.index
        line_start = self.text.rfind("\n", 0, end) + 1
        if not self.text[line_start:end].strip():
            return line_start
        newline = self.text.find("\n", end)
        return len(self.text) if newline < 0 else newline + 1

    def apply(self) -> str:
        text = self.text
        for start, end, new in sorted(self.spans, key=lambda s: (s[0], s[1]), reverse=True):
            text = text[:start] + new + text[end:]
        return text


def _walk(node: Node, where: str, edits: _Edits) -> None:
    if isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, f"{where}.{i}" if where else str(i), edits)
    if not isinstance(node, MappingNode):
        return
    entries = {k.value: (k, v) for k, v in node.value if isinstance(k, ScalarNode)}
    if "_component_" in entries:
        _component(node, entries, where or "config", edits)
    for key, (_, value) in entries.items():
        _walk(value, f"{where}.{key}" if where else key, edits)


def _component(node: MappingNode, entries: dict, where: str, edits: _Edits) -> None:
    path_node = entries["_component_"][1]
    path = path_node.value if isinstance(path_node, ScalarNode) else None
    if not torchtune_names.is_torchtune(path) or path in torchtune_names.THIRD_PARTY:
        return  # bitsandbytes' optimizers keep their name: `tune run` says if the package is missing
    found = torchtune_names.equivalent(path, f"{where}._component_")
    if found.path != path:
        edits.replace(path_node, found.path, f"{where}._component_: {path} -> {found.path}")
    for old, new in found.renamed.items():
        if old in entries:
            edits.replace(entries[old][0], new, f"{where}.{old} -> {where}.{new} (tunelib's name)")
    for arg, value in found.fixed.items():
        _fixed(node, entries, where, arg, value, path, edits)
    if found.path == CHECKPOINTER:
        _checkpointer_keys(entries, where, edits)
    if "lora_attn_modules" in entries:
        _module_names(entries["lora_attn_modules"][1], where, edits)


def _fixed(node: MappingNode, entries: dict, where: str, arg: str, value, path: str, edits: _Edits) -> None:
    """Write out an argument the torchtune name implies (qlora_*: quantize_base: true)."""
    text = json.dumps(value)
    if arg in entries:
        given = yaml.safe_load(entries[arg][1].value) if isinstance(entries[arg][1], ScalarNode) else None
        if given != value:
            raise ConfigError(f"{where}.{arg}={given} contradicts {path}, which means {arg}={text}")
        return
    reason = f"{where}.{arg}: {text} added ({path.rsplit('.', 1)[1]} means it)"
    if node.flow_style:
        edits.spans.append((node.end_mark.index - 1, node.end_mark.index - 1, f", {arg}: {text}"))
        edits.changes.append(reason)
    else:
        key, val = entries["_component_"]
        edits.add_entry_after(key, val, f"{arg}: {text}", reason)


def _checkpointer_keys(entries: dict, where: str, edits: _Edits) -> None:
    for key, why in _RESTATED.items():
        if key in entries:
            edits.remove_entry(*entries[key], f"{where}.{key}: removed ({why}; `tune run` checks it if kept)")
    for key in _NULL_ONLY:
        value = entries.get(key, (None, None))[1]
        if isinstance(value, ScalarNode) and value.tag.endswith(":null"):
            edits.remove_entry(*entries[key], f"{where}.{key}: removed (null)")


def _module_names(node: Node, where: str, edits: _Edits) -> None:
    if not isinstance(node, SequenceNode):
        return
    for item in node.value:
        if isinstance(item, ScalarNode) and item.value in torchtune_names.MODULE_NAMES:
            new = torchtune_names.MODULE_NAMES[item.value]
            quote = item.style if item.style in ("'", '"') else ""
            edits.replace(item, quote + new + quote,
                          f"{where}.lora_attn_modules: {item.value} -> {new} (Hugging Face's name)")


def _top_level(root: MappingNode, edits: _Edits) -> None:
    entries = {k.value: (k, v) for k, v in root.value if isinstance(k, ScalarNode)}
    for key, why in _TOP_LEVEL.items():
        if key in entries:
            edits.remove_entry(*entries[key], f"{key}: removed ({why})")
    checkpointer = entries.get("checkpointer", (None, None))[1]
    inner = ({k.value: (k, v) for k, v in checkpointer.value if isinstance(k, ScalarNode)}
             if isinstance(checkpointer, MappingNode) else {})
    folder = inner.get("checkpoint_dir", (None, None))[1]
    if "checkpoint_dir" in entries or not isinstance(folder, ScalarNode) or "${" in folder.value:
        return
    anchor = entries.get("output_dir") or next(iter(entries.values()))
    edits.add_entry_after(*anchor, f"checkpoint_dir: {folder.value}",
                          f"checkpoint_dir: {folder.value} added (from checkpointer.checkpoint_dir)")
    edits.replace(folder, "${checkpoint_dir}", "checkpointer.checkpoint_dir -> ${checkpoint_dir}")
