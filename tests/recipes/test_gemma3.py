"""`tune run lora_finetune_single_device --config gemma3/1B_lora` on a tiny Gemma 3 (both layer
types, a RoPE base each, q/k norms, a final soft-cap): the adapter loads in PEFT onto
transformers' Gemma3ForCausalLM and gives our logits, and so does the merged folder."""

from __future__ import annotations

import pytest
import torch

from support.models import load_hf_model
from support.recipes import finetune, tiny_model_folder

pytestmark = pytest.mark.slow


def test_gemma3_lora_adapter_loads_in_peft_with_our_logits(tune, tmp_path):
    from peft import PeftModel

    import tunelib.checkpoint
    from tunelib.peft import load_peft_adapter

    folder = tiny_model_folder(tmp_path / "models", "gemma3")
    result = finetune(tune, "lora_finetune_single_device", "gemma3/1B_lora", folder, tmp_path / "out",
                      "lr_scheduler.num_warmup_steps=0", "optimizer.lr=3e-3", "dataset.packed=True")
    assert result.code == 0, result.err
    assert len(result.losses) == 4 and result.losses[-1] < result.losses[0]
    final = tmp_path / "out/final"
    ids = torch.randint(0, 500, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = load_peft_adapter(tunelib.checkpoint.from_pretrained(folder), final / "adapter").eval()(ids)
        peft_model = PeftModel.from_pretrained(load_hf_model(folder), str(final / "adapter")).eval()
        peft_logits = peft_model(ids).logits
        merged = load_hf_model(final / "merged")(ids).logits
        base = load_hf_model(folder)(ids).logits
    assert (ours - base).abs().max() > 1e-3  # training changed something
    torch.testing.assert_close(peft_logits, ours, atol=1e-4, rtol=0)
    torch.testing.assert_close(merged, ours, atol=1e-4, rtol=0)
