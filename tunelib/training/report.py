"""The last thing a run prints: where the model is and how to load it."""

from __future__ import annotations

from pathlib import Path

# The file that marks a LLaMA-Adapter folder (tunelib.peft.llama_adapter_folder.CONFIG_NAME);
# written out so that importing this module stays light.
LLAMA_ADAPTER_CONFIG = "tunelib_llama_adapter.json"


def final_message(folder: Path, base_model: str, adapter: bool, merged: bool) -> str:
    """Copy-paste lines to load the output with transformers, PEFT and vLLM."""
    folder = Path(folder).resolve()
    lines = [f"\nDone. Output: {folder}"]
    if not adapter:
        lines += [
            "  transformers: AutoModelForCausalLM.from_pretrained(\"" + str(folder) + "\")",
            f"  vLLM:         vllm serve {folder}",
            f"  chat here:    tune run generate --config generation checkpoint_dir={folder} prompt=\"Hello\"",
        ]
        return "\n".join(lines)
    if (folder / "adapter" / LLAMA_ADAPTER_CONFIG).is_file():
        return "\n".join(lines + _llama_adapter_lines(folder, base_model, merged))
    lines.append(f"  adapter (PEFT):  {folder / 'adapter'}")
    if merged:
        lines.append(f"  merged model:    {folder / 'merged'}")
    lines += [
        "  PEFT:  model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(\""
        + base_model + "\"), \"" + str(folder / "adapter") + "\")",
        f"  vLLM:  vllm serve {base_model} --enable-lora --lora-modules mine={folder / 'adapter'}",
    ]
    if merged:
        lines += [
            "  transformers: AutoModelForCausalLM.from_pretrained(\"" + str(folder / "merged") + "\")",
            f"  vLLM (merged): vllm serve {folder / 'merged'}",
        ]
    return "\n".join(lines)


def _llama_adapter_lines(folder: Path, base_model: str, merged: bool) -> list[str]:
    """LLaMA-Adapter: tunelib's own format (PEFT and vLLM cannot load it); a v2 fold loads anywhere."""
    # tunelib loads from a folder; a recorded Hub id names the folder `tune download` wrote.
    base = base_model if Path(base_model).is_dir() else f"<your download of {base_model}>"
    lines = [
        f"  adapter (tunelib LLaMA-Adapter): {folder / 'adapter'}",
        "  tunelib: model = tunelib.peft.load_llama_adapter(tunelib.models.from_pretrained(\""
        + base + "\"), \"" + str(folder / "adapter") + "\")",
    ]
    if merged:
        lines += [
            f"  merged (v2 scales and biases folded in, prompts left out): {folder / 'merged'}",
            "  transformers: AutoModelForCausalLM.from_pretrained(\"" + str(folder / "merged") + "\")",
        ]
    return lines
