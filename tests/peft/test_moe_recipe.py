"""`tune run` LoRA on the mixture-of-experts families: adapters PEFT loads, sharded runs equal one process,
and the families' shipped configs (LoRA, DPO, distillation) run."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from support.data import write_rows
from support.models import load_hf_model
from support.recipes import ROWS, finetune, tiny_model_folder, torchrun_finetune

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")]
CONFIG = "llama3_2/1B_lora_tunelib"  # its model node is replaced by from_hf_config on the tiny folder
SETTINGS = ("model.apply_lora_to_mlp=True", "lr_scheduler.num_warmup_steps=0", "optimizer.lr=3e-3")


def every_layer_moe(family: str) -> dict:
    # PEFT 0.21 drops gate/up/down_proj targets from a Qwen3-MoE's dense layers (see test_moe_lora.py).
    return {"mlp_only_layers": []} if family == "qwen3_moe" else {}


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral"])
def test_lora_run_writes_an_adapter_peft_loads_with_our_logits(family, tune, tmp_path):
    from peft import PeftModel

    folder = tiny_model_folder(tmp_path / "m", family, **every_layer_moe(family))
    run = finetune(tune, "lora_finetune_single_device", CONFIG, folder, tmp_path / "out", *SETTINGS)
    assert run.code == 0, run.err[-3000:]
    assert len(run.losses) == 4 and run.losses[-1] < run.losses[0]
    adapter = load_file(tmp_path / "out/final/adapter/adapter_model.safetensors")
    block = "block_sparse_moe" if family == "mixtral" else "mlp"
    down = "w2" if family == "mixtral" else "down_proj"
    trained = adapter[f"base_model.model.model.layers.1.{block}.experts.3.{down}.lora_B.weight"]
    assert trained.abs().sum() > 0  # the experts' adapters learned

    ids = torch.randint(0, 500, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        merged = load_hf_model(tmp_path / "out/final/merged")(ids).logits
        peft = PeftModel.from_pretrained(load_hf_model(folder), str(tmp_path / "out/final/adapter"))(ids).logits
        base = load_hf_model(folder)(ids).logits
    assert (merged - base).abs().max() > 1e-3
    torch.testing.assert_close(peft, merged, atol=1e-4, rtol=0)

    # `tune merge_lora` stacks the per-expert adapters onto the base again and writes per-expert keys.
    code, _, err = tune("merge_lora", "--adapter", str(tmp_path / "out/final/adapter"), "--base", str(folder),
                        "--output-dir", str(tmp_path / "merged"))
    assert code == 0, err
    with torch.no_grad():
        torch.testing.assert_close(load_hf_model(tmp_path / "merged")(ids).logits, merged, atol=1e-4, rtol=0)


def test_full_finetune_run_trains_routers_and_experts(tune, tmp_path):
    folder = tiny_model_folder(tmp_path / "m", "qwen3_moe")
    run = finetune(tune, "full_finetune_single_device", "llama3_1/8B_full_tunelib", folder, tmp_path / "out",
                   "optimizer._component_=torch.optim.AdamW", "optimizer.lr=1e-3", "optimizer_in_bwd=False")
    assert run.code == 0, run.err[-3000:]
    assert len(run.losses) == 4 and run.losses[-1] < run.losses[0]
    before, after = load_file(folder / "model.safetensors"), load_file(tmp_path / "out/final/model.safetensors")
    assert before.keys() == after.keys()  # per-expert keys, as transformers saved them
    for key in ("model.layers.0.mlp.gate.weight", "model.layers.0.mlp.experts.3.down_proj.weight"):
        assert not torch.equal(before[key], after[key]), key
    ids = torch.randint(0, 500, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert load_hf_model(tmp_path / "out/final")(ids).logits.isfinite().all()


def test_qlora_run_on_nf4_experts(tune, tmp_path):
    # hidden 128 and experts of 128 rows: every decoder weight fits NF4's 16384-element blocks.
    folder = tiny_model_folder(tmp_path / "m", "mixtral", hidden_size=128, intermediate_size=128,
                               num_key_value_heads=4)
    run = finetune(tune, "lora_finetune_single_device", CONFIG, folder, tmp_path / "out", *SETTINGS,
                   "model.quantize_base=True")
    assert run.code == 0, run.err[-3000:]
    assert len(run.losses) == 4 and run.losses[-1] < run.losses[0]
    ids = torch.randint(0, 500, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert load_hf_model(tmp_path / "out/final/merged")(ids).logits.isfinite().all()


@pytest.mark.distributed
@pytest.mark.parametrize("quantized", [False, True], ids=["lora", "qlora"])
def test_sharded_moe_lora_on_two_processes_matches_one(tune, tmp_path, quantized):
    # Each process keeps 2 of the 4 experts of every stacked weight (NF4 ones too, under QLoRA;
    # hidden 256 so that every NF4 weight splits into whole blocks of scales on 2 processes).
    # The load-balancing loss is off: it is a product of per-expert means over each process's own
    # tokens (as transformers computes it per forward), so with it 2 processes are not 1 exactly.
    folder = tiny_model_folder(tmp_path / "m", "mixtral", hidden_size=256, intermediate_size=256,
                               num_key_value_heads=4, router_aux_loss_coef=0.0)
    settings = (*SETTINGS, f"model.quantize_base={quantized}")
    one = finetune(tune, "lora_finetune_single_device", CONFIG, folder, tmp_path / "one", *settings, "batch_size=4")
    two = torchrun_finetune(2, "lora_finetune_distributed", CONFIG, folder, tmp_path / "two", *settings,
                            "batch_size=2")
    assert one.code == 0 and two.code == 0, two.err[-3000:]
    assert len(one.losses) == 4
    assert all(abs(a - b) <= 1e-5 for a, b in zip(one.losses, two.losses)), (one.losses, two.losses)
    # What the two runs learned, as transformers computes it from their merged folders.
    ids = torch.randint(0, 500, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = [load_hf_model(tmp_path / run / "final/merged")(ids).logits for run in ("one", "two")]
    torch.testing.assert_close(logits[1], logits[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("recipe, config", [
    ("lora_finetune_single_device", "qwen3_moe/30B-A3B_lora"),
    ("lora_dpo_single_device", "mixtral/8x7B_lora_dpo"),
    ("knowledge_distillation_single_device", "qwen3_moe/235B-A22B_to_30B-A3B_KD_lora"),
])
def test_shipped_moe_configs_run(recipe, config, tune, tmp_path):
    """The MoE families' own configs, pointed at a tiny folder of the family (a teacher of 3 layers)."""
    family = config.split("/")[0]
    folder = tiny_model_folder(tmp_path / "m", family)
    extra: tuple[str, ...] = ("lr_scheduler.num_warmup_steps=0",)
    data = None
    if "dpo" in config:
        pairs = [{"prompt": r["instruction"], "chosen": r["output"], "rejected": ROWS[(i + 1) % len(ROWS)]["output"]}
                 for i, r in enumerate(ROWS) if r["output"] != ROWS[(i + 1) % len(ROWS)]["output"]]
        data = write_rows(tmp_path / "pairs.jsonl", pairs)
    if "KD" in config:
        teacher = tiny_model_folder(tmp_path / "t", family, num_hidden_layers=3)
        extra += ("teacher_model._component_=tunelib.models.from_hf_config", f"teacher_checkpoint_dir={teacher}")
    run = finetune(tune, recipe, config, folder, tmp_path / "out", *extra, data=data)
    assert run.code == 0, run.err[-3000:]
    assert len(run.losses) == 4 and all(m["router_aux_loss"] > 0 for m in run.metrics)
    assert (tmp_path / "out/final/adapter/adapter_model.safetensors").is_file()
