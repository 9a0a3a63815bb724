"""The last thing a run prints: where the model is, how to load it, what to try next, or how
to resume a stopped run."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
from pathlib import Path

from tunelib.errors import program

# The file that marks a LLaMA-Adapter folder (tunelib.peft.llama_adapter_folder.CONFIG_NAME);
# written out so that importing this module stays light.
LLAMA_ADAPTER_CONFIG = "tunelib_llama_adapter.json"
# vLLM refuses adapters of a higher rank unless `--max-lora-rank` is raised (its default is 16),
# and takes only these values for it.
VLLM_DEFAULT_MAX_LORA_RANK = 16
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def final_message(folder: Path, base_model: str, adapter: bool, merged: bool) -> str:
    """Copy-paste lines to load the output with transformers, PEFT and vLLM."""
    folder = Path(folder).resolve()
    lines = [f"\nDone. Output: {folder}"]
    if not adapter:
        lines += [
            "  transformers: AutoModelForCausalLM.from_pretrained(\"" + str(folder) + "\")",
            f"  vLLM:         vllm serve {folder}",
        ]
        return "\n".join(lines)
    if (folder / "adapter" / LLAMA_ADAPTER_CONFIG).is_file():
        return "\n".join(lines + _llama_adapter_lines(folder, base_model, merged))
    lines.append(f"  adapter (PEFT):  {folder / 'adapter'}")
    if merged:
        lines.append(f"  merged model:    {folder / 'merged'}")
    lines.append("  PEFT:  model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(\""
                 + base_model + "\"), \"" + str(folder / "adapter") + "\")")
    lines += _vllm_adapter_lines(folder, base_model, merged)
    if merged:
        lines += [
            "  transformers: AutoModelForCausalLM.from_pretrained(\"" + str(folder / "merged") + "\")",
            f"  vLLM (merged): vllm serve {folder / 'merged'}",
        ]
    return "\n".join(lines)


def _vllm_adapter_lines(folder: Path, base_model: str, merged: bool) -> list[str]:
    """vLLM serves LoRA adapters (raising --max-lora-rank above its default when needed) but not DoRA."""
    config = _adapter_config(folder / "adapter")
    if config.get("use_dora"):
        fix = "serve the merged folder" if merged else f"merge it first: tune merge_lora --adapter {folder / 'adapter'}"
        return [f"  vLLM:  does not load DoRA adapters; {fix}"]
    rank = max([int(config.get("r") or 0), *[int(r) for r in (config.get("rank_pattern") or {}).values()]])
    allowed = next((r for r in VLLM_MAX_LORA_RANKS if r >= rank), rank)
    raise_rank = f" --max-lora-rank {allowed}" if rank > VLLM_DEFAULT_MAX_LORA_RANK else ""
    return [f"  vLLM:  vllm serve {base_model} --enable-lora{raise_rank} --lora-modules mine={folder / 'adapter'}"]


def _adapter_config(folder: Path) -> dict:
    try:
        return json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return {}


def _llama_adapter_lines(folder: Path, base_model: str, merged: bool) -> list[str]:
    """LLaMA-Adapter: tunelib's own format (PEFT and vLLM cannot load it); a v2 fold loads anywhere."""
    # tunelib loads from a folder; a recorded Hub id names the folder `tune download` wrote.
    base = base_model if Path(base_model).is_dir() else f"<your download of {base_model}>"
    lines = [
        f"  adapter (tunelib LLaMA-Adapter): {folder / 'adapter'}",
        "  tunelib: model = tunelib.peft.load_llama_adapter(tunelib.checkpoint.from_pretrained(\""
        + base + "\"), \"" + str(folder / "adapter") + "\")",
    ]
    if merged:
        lines += [
            f"  merged (v2 scales and biases folded in, prompts left out): {folder / 'merged'}",
            "  transformers: AutoModelForCausalLM.from_pretrained(\"" + str(folder / "merged") + "\")",
        ]
    return lines


def outputs(final: Path) -> dict[str, str]:
    """What the final folder holds, by kind, for summary.json."""
    final = Path(final).resolve()
    found = {"final": str(final)}
    for kind in ("adapter", "merged"):
        if (final / kind).is_dir():
            found[kind] = str(final / kind)
    return found


def next_commands(final: Path, base_model: str, *, adapter: bool, merged: bool, prompt: str | None) -> list[str]:
    """Commands to talk with the fine-tuned model; `prompt` (a question from the training data) is asked."""
    final = Path(final).resolve()
    if not adapter:
        model, extra = final, ""
    elif merged:
        model, extra = final / "merged", ""
    else:
        model, extra = Path(base_model), f" adapter_dir={final / 'adapter'}"
    chat_adapter = f" --adapter {final / 'adapter'}" if extra else ""
    asked = _shell_setting("prompt", prompt or "Hello")
    tune = program()  # `tunelib` when the run was started as `tunelib`: its `tune` may be torchtune's
    # A plain `pip install tunelib` (the README's demo) lacks the gguf package the export needs.
    install = "" if gguf_installed() else "pip install 'tunelib[gguf]' && "
    return [f"  {tune} chat {model}{chat_adapter}",
            f"  {tune} run generate --config generation checkpoint_dir={model}{extra} {asked}",
            f"  {install}{tune} export gguf {final} -o {final.parent / 'model.gguf'}"
            f"{f' --base {base_model}' if extra else ''}"]


def gguf_installed() -> bool:
    """Whether the gguf package `tune export gguf` writes with can be imported."""
    return importlib.util.find_spec("gguf") is not None


def _shell_setting(key: str, value: str) -> str:
    """`key="value"` as a shell reads it (double quotes where they are enough)."""
    if not any(c in value for c in '"$`\\!\n'):
        return f'{key}="{value}"'
    return shlex.quote(f"{key}={value}")


def resume_command(recipe: str, output_dir: Path, world_size: int) -> str:
    """The command that continues a stopped run of `recipe` (e.g. lora_finetune) exactly: its
    resolved config from output_dir, with the recipe's _single_device or _distributed name."""
    config = Path(output_dir).resolve() / "config.yaml"
    allowed = [m for m in os.environ.get("TUNELIB_ALLOW_MODULES", "").split(",") if m]
    options = "".join(f"--allow-module {m} " for m in allowed)
    if world_size > 1:
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        others = "(and your other torchrun options) " if per_node != world_size else ""
        launch = f"--nproc_per_node {per_node} {others}"
        recipe = f"{recipe}_distributed"
    else:
        launch, recipe = "", f"{recipe}_single_device"
    return f"{program()} run {launch}{options}{recipe} --config {shlex.quote(str(config))} resume_from_checkpoint=True"
