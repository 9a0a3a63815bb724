"""Two CPU processes through torchrun (gloo): the same global batch gives the single-device
losses, resume at two processes is exact, and the outputs load in transformers and PEFT."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from support.models import load_hf_model
from support.recipes import finetune, tiny_model_folder, torchrun_finetune

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
LORA = ("lora_finetune_distributed", "llama3_2/1B_lora_tunelib")
FAST = ("lr_scheduler.num_warmup_steps=0", "optimizer.lr=3e-3")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("models"), "llama3_2")  # tied embeddings


def close(a: list[float], b: list[float], tol: float = 1e-5) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b))


def test_lora_on_two_processes_matches_one_and_resumes_exactly(tune, folder, tmp_path):
    from peft import PeftModel

    one = finetune(tune, "lora_finetune_single_device", LORA[1], folder, tmp_path / "one", *FAST, "batch_size=4")
    two = torchrun_finetune(2, *LORA, folder, tmp_path / "two", *FAST, "batch_size=2", "save_every_n_steps=2")
    assert one.code == 0 and two.code == 0, two.err[-3000:]
    assert close(two.losses, one.losses), (one.losses, two.losses)

    ids = torch.randint(0, 700, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        merged_one = load_hf_model(tmp_path / "one/final/merged")(ids).logits
        merged_two = load_hf_model(tmp_path / "two/final/merged")(ids).logits
        peft_two = PeftModel.from_pretrained(load_hf_model(folder), str(tmp_path / "two/final/adapter"))(ids).logits
    torch.testing.assert_close(merged_two, merged_one, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(peft_two, merged_two, atol=1e-5, rtol=1e-5)

    shutil.copytree(tmp_path / "two/step_2", tmp_path / "cut/step_2")  # as if both ranks died after step 2
    resumed = torchrun_finetune(2, *LORA, folder, tmp_path / "cut", *FAST, "batch_size=2", "save_every_n_steps=2",
                                "resume_from_checkpoint=True")
    assert resumed.code == 0, resumed.err[-3000:]
    assert "Resuming from" in resumed.out
    assert [m["step"] for m in resumed.metrics] == [3, 4]
    assert resumed.losses == two.losses[2:]
    a = load_file(tmp_path / "two/final/adapter/adapter_model.safetensors")
    b = load_file(tmp_path / "cut/final/adapter/adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_full_finetune_on_two_processes_matches_one(tune, tmp_path):
    folder = tiny_model_folder(tmp_path / "m", "llama3_1")
    settings = ("optimizer._component_=torch.optim.AdamW", "optimizer.lr=1e-3")
    one = finetune(tune, "full_finetune_single_device", "llama3_1/8B_full_tunelib", folder, tmp_path / "one", *settings,
                   "batch_size=4", "optimizer_in_bwd=False")
    two = torchrun_finetune(2, "full_finetune_distributed", "llama3_1/8B_full_tunelib", folder, tmp_path / "two", *settings,
                            "batch_size=2", "optimizer_in_bwd=True")  # the shipped config's setting, sharded
    assert one.code == 0 and two.code == 0, two.err[-3000:]
    assert close(two.losses, one.losses), (one.losses, two.losses)
    a, b = load_file(tmp_path / "one/final/model.safetensors"), load_file(tmp_path / "two/final/model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5

    # The finished sharded run goes on from final/: its per-parameter optimizers' states come back.
    longer = [*settings, "lr_scheduler=null", "max_steps_per_epoch=6"]
    one = finetune(tune, "full_finetune_single_device", "llama3_1/8B_full_tunelib", folder, tmp_path / "one6", *longer,
                   "batch_size=4", "optimizer_in_bwd=False")
    shorter = torchrun_finetune(2, "full_finetune_distributed", "llama3_1/8B_full_tunelib", folder, tmp_path / "two6",
                                *longer[:-1], "max_steps_per_epoch=4", "batch_size=2", "optimizer_in_bwd=True")
    extended = torchrun_finetune(2, "full_finetune_distributed", "llama3_1/8B_full_tunelib", folder, tmp_path / "two6",
                                 *longer, "batch_size=2", "optimizer_in_bwd=True", "resume_from_checkpoint=True")
    assert shorter.code == 0 and extended.code == 0, extended.err[-3000:]
    assert [m["step"] for m in extended.metrics] == [1, 2, 3, 4, 5, 6]
    assert close(extended.losses, one.losses), (one.losses, extended.losses)


@pytest.mark.parametrize("quantized", [False, True], ids=["dora", "qdora"])
def test_dora_on_two_processes_matches_one(tune, tmp_path, quantized):
    # The magnitudes are the norms of the loaded base rows: each rank computes its own piece.
    folder = tiny_model_folder(tmp_path / "m", "llama3_1", hidden_size=256, intermediate_size=512, num_key_value_heads=4)
    settings = (*FAST, "gradient_accumulation_steps=1", f"model.quantize_base={quantized}")
    one = finetune(tune, "lora_finetune_single_device", "llama3_1/8B_dora", folder, tmp_path / "one", *settings,
                   "batch_size=4")
    two = torchrun_finetune(2, "lora_finetune_distributed", "llama3_1/8B_dora", folder, tmp_path / "two", *settings,
                            "batch_size=2")
    assert one.code == 0 and two.code == 0, two.err[-3000:]
    assert close(two.losses, one.losses, 1e-4), (one.losses, two.losses)
    a = load_file(tmp_path / "one/final/adapter/adapter_model.safetensors")
    b = load_file(tmp_path / "two/final/adapter/adapter_model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


def test_qlora_nf4_base_under_fsdp2(tune, tmp_path):
    # NF4 shards its scale groups over the ranks: every weight needs 2 x 16384 elements.
    folder = tiny_model_folder(tmp_path / "m", "llama3_1", hidden_size=256, intermediate_size=512, num_key_value_heads=4)
    settings = (*FAST, "gradient_accumulation_steps=1", "enable_activation_checkpointing=True")
    one = finetune(tune, "lora_finetune_single_device", "llama3_1/8B_qlora", folder, tmp_path / "one", *settings,
                   "batch_size=4")
    two = torchrun_finetune(2, "lora_finetune_distributed", "llama3_1/8B_qlora", folder, tmp_path / "two", *settings,
                            "batch_size=2")
    assert one.code == 0 and two.code == 0, two.err[-3000:]
    assert close(two.losses, one.losses, 1e-4), (one.losses, two.losses)
    assert (tmp_path / "two/final/merged/model.safetensors").is_file()


def test_llama_adapter_v2_on_two_processes_matches_one(tune, tmp_path):
    from safetensors.torch import load_file as load

    folder = tiny_model_folder(tmp_path / "m", "llama3_2", num_hidden_layers=3)  # prompts in layer 2
    config = "llama3_2/1B_adapter_v2"
    settings = ("lr_scheduler.num_warmup_steps=0", "optimizer.lr=1e-2", "fold_adapter_v2=True")
    one = finetune(tune, "adapter_finetune_single_device", config, folder, tmp_path / "one", *settings, "batch_size=4")
    two = torchrun_finetune(2, "adapter_finetune_distributed", config, folder, tmp_path / "two", *settings,
                            "batch_size=2")
    assert one.code == 0 and two.code == 0, two.err[-3000:]
    assert close(two.losses, one.losses), (one.losses, two.losses)
    name = "adapter/tunelib_llama_adapter.safetensors"
    a, b = load(tmp_path / "one/final" / name), load(tmp_path / "two/final" / name)
    # Adam divides by the gradient's own size, so where a gradient is near zero the order of the
    # cross-rank sum shows at the lr's scale (1e-2) in the weights though the losses agree.
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3
    assert (tmp_path / "two/final/merged/config.json").is_file()
