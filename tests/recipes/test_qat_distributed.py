"""QAT under torchrun (FSDP2 on gloo): two processes compute what one does, fake quantization included.

With a learning rate the two runs drift apart by more than plain training does: their weights differ
by float rounding (~1e-7) after the first sharded step, and fake quantization turns a weight that sits
on the boundary between two int4 levels into a whole level's difference. With lr=0 the weights stay
the same, so losses and gradient norms (forward and backward through the fake quantizers, with
sharded weights gathered for it) must agree step by step.
"""

from __future__ import annotations

import pytest

from support.recipes import finetune, tiny_model_folder, torchrun_finetune

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
SETTINGS = ("optimizer._component_=torch.optim.AdamW", "optimizer_in_bwd=False", "optimizer.lr=0",
            "quantizer.groupsize=32", "fake_quant_after_n_steps=1")


def test_qat_on_two_processes_computes_what_one_does(tune, tmp_path):
    folder = tiny_model_folder(tmp_path / "m", "llama3_2")
    one = finetune(tune, "qat_single_device", "llama3_2/1B_qat_full", folder, tmp_path / "one", *SETTINGS,
                   "batch_size=4")
    two = torchrun_finetune(2, "qat_distributed", "llama3_2/1B_qat_full", folder, tmp_path / "two", *SETTINGS,
                            "batch_size=2")
    assert one.code == 0 and two.code == 0, two.err[-3000:]
    assert "Step 2: fake quantization on" in two.out
    for key in ("loss", "grad_norm"):
        ours, theirs = [m[key] for m in one.metrics], [m[key] for m in two.metrics]
        assert len(ours) == 4 and theirs == pytest.approx(ours, rel=1e-5), key
    assert one.losses[1] != one.losses[0]  # different batches: the comparison is not of one number
