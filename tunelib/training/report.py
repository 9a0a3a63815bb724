"""The last thing a run prints: where the model is and how to load it."""

from __future__ import annotations

from pathlib import Path


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
