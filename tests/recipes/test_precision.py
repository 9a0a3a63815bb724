"""Precision of trained weights in bf16 runs: fp32 adapters by default (`adapter_dtype`), DoRA's
exact start, and full fine-tuning's `weight_precision` (fp32 master weights, stochastic rounding).

The runs are tiny and short, so the observable is what bf16 storage loses: at a learning rate of
1e-4 (1e-5 for full fine-tuning) an update is smaller than half a bf16 step of most weights and
rounds away, which fp32 storage keeps.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from support.models import load_hf_model
from support.recipes import finetune, tiny_model_folder, words

LORA = ("lora_finetune_single_device", "llama3_2/1B_lora_tunelib")
DORA = ("lora_finetune_single_device", "llama3_2/1B_dora")
V2 = ("adapter_finetune_single_device", "llama3_2/1B_adapter_v2")
FULL = ("full_finetune_single_device", "llama3_2/1B_full_tunelib")
SMALL_LR = ("lr_scheduler.num_warmup_steps=0", "optimizer.lr=1e-4", "max_steps_per_epoch=2")
BF16 = "dtype=bf16"
IDS = torch.randint(0, 700, (2, 12), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("models"), "llama3_2", num_hidden_layers=3)


def tensors(run, name: str = "adapter/adapter_model.safetensors") -> dict[str, torch.Tensor]:
    return load_file(run.output_dir / "final" / name)


def update_error(run, start, reference, part: str) -> tuple[float, float]:
    """(share of `part` entries that moved from `start`, relative error of their update against `reference`'s)."""
    got, first, ref = tensors(run), tensors(start), tensors(reference)
    keys = [k for k in got if part in k]
    # `start` kept fp32 adapters: a bf16 run started from the same values rounded to bf16.
    first = {k: v.to(got[k].dtype).float() if k in got else v for k, v in first.items()}
    moved = sum((got[k].float() != first[k].float()).sum().item() for k in keys) / sum(got[k].numel() for k in keys)
    err = sum(((got[k].float() - first[k].float()) - (ref[k] - first[k])).norm() ** 2 for k in keys) ** 0.5
    size = sum((ref[k] - first[k]).norm() ** 2 for k in keys) ** 0.5
    return moved, (err / size).item()


@pytest.mark.slow
def test_bf16_lora_keeps_fp32_adapters_whose_updates_bf16_ones_round_away(tune, folder, tmp_path):
    start = finetune(tune, *LORA, folder, tmp_path / "start", BF16, "optimizer.lr=0", "max_steps_per_epoch=1")
    fp32_run = finetune(tune, *LORA, folder, tmp_path / "fp32", *SMALL_LR)
    default = finetune(tune, *LORA, folder, tmp_path / "default", *SMALL_LR, BF16)
    off = finetune(tune, *LORA, folder, tmp_path / "off", *SMALL_LR, BF16, "adapter_dtype=bf16")
    assert all(r.code == 0 for r in (start, fp32_run, default, off)), off.err[-2000:]

    assert {t.dtype for t in tensors(default).values()} == {torch.float32}  # as PEFT saves them
    assert {t.dtype for t in tensors(off).values()} == {torch.bfloat16}
    assert {t.dtype for t in tensors(default, "merged/model.safetensors").values()} == {torch.bfloat16}
    # lora_A starts at kaiming-uniform values whose bf16 step is larger than twice the update.
    moved, err = update_error(default, start, fp32_run, "lora_A")
    moved_off, err_off = update_error(off, start, fp32_run, "lora_A")
    assert moved == 1.0 and err < 0.2, (moved, err)
    assert moved_off < 0.5 and err_off > 0.6, (moved_off, err_off)


def test_peft_loads_the_fp32_adapter_of_a_bf16_run_with_our_logits(tune, folder, tmp_path):
    from peft import PeftModel

    import tunelib.checkpoint
    from tunelib.peft import load_peft_adapter, store_trained_in

    run = finetune(tune, *LORA, folder, tmp_path / "out", BF16, "lr_scheduler.num_warmup_steps=0", "optimizer.lr=3e-3")
    assert run.code == 0, run.err[-2000:]
    adapter = run.output_dir / "final/adapter"

    def ours(dtype):
        model = load_peft_adapter(tunelib.checkpoint.from_pretrained(folder, dtype=dtype), adapter)
        store_trained_in(model, torch.float32)  # as the run kept them (a no-op in fp32)
        return load_peft_adapter(model, adapter).eval()  # the file's fp32 values, unrounded

    with torch.no_grad():
        # On an fp32 base both load the very same numbers.
        theirs = PeftModel.from_pretrained(load_hf_model(folder), str(adapter)).eval()(IDS).logits
        torch.testing.assert_close(theirs, ours(torch.float32)(IDS), atol=1e-5, rtol=1e-5)
        # On the bf16 base PEFT keeps fp32 adapters too (autocast_adapter_dtype): the logits agree as
        # closely as the two bf16 base models do, far closer than training moved them.
        peft_bf16 = PeftModel.from_pretrained(load_hf_model(folder).to(torch.bfloat16), str(adapter)).eval()
        assert {p.dtype for n, p in peft_bf16.named_parameters() if "lora_" in n} == {torch.float32}
        theirs, mine = peft_bf16(IDS).logits.float(), ours(torch.bfloat16)(IDS).float()
        base = tunelib.checkpoint.from_pretrained(folder, dtype=torch.bfloat16)(IDS).float()
        bases = (load_hf_model(folder).to(torch.bfloat16)(IDS).logits.float() - base).abs().max()
    assert (mine - base).abs().max() > 10 * bases
    assert (theirs - mine).abs().max() <= 2 * bases


def dora_start(folder) -> dict[str, torch.Tensor]:
    """The magnitudes DoRA starts from: the fp32 norms of the bf16 base rows, by PEFT key."""
    base = load_file(folder / "model.safetensors")
    return {f"base_model.model.{k.removesuffix('.weight')}.lora_magnitude_vector":
            torch.linalg.norm(w.to(torch.bfloat16).float(), dim=1) for k, w in base.items() if k.endswith("proj.weight")}


@pytest.mark.slow
def test_dora_magnitudes_train_in_fp32_and_round_away_in_bf16(tune, folder, tmp_path):
    default = finetune(tune, *DORA, folder, tmp_path / "default", *SMALL_LR, BF16)
    off = finetune(tune, *DORA, folder, tmp_path / "off", *SMALL_LR, BF16, "adapter_dtype=bf16")
    assert default.code == 0 and off.code == 0, off.err[-2000:]
    start = dora_start(folder)

    def moved(run):
        saved = {k: v for k, v in tensors(run).items() if k.endswith("lora_magnitude_vector")}
        assert saved.keys() <= start.keys() and saved
        return sum((v != start[k].to(v.dtype)).sum().item() for k, v in saved.items()) / sum(
            v.numel() for v in saved.values())

    assert moved(default) == 1.0
    assert moved(off) < 0.05  # a norm near 0.2 has bf16 steps of 1e-3, ten times the update


@pytest.mark.slow
def test_llama_adapter_v2_scales_and_norms_train_in_fp32(tune, folder, tmp_path):
    default = finetune(tune, *V2, folder, tmp_path / "default", *SMALL_LR, BF16, "fold_adapter_v2=True")
    off = finetune(tune, *V2, folder, tmp_path / "off", *SMALL_LR, BF16, "adapter_dtype=bf16")
    assert default.code == 0 and off.code == 0, off.err[-2000:]
    name = "adapter/tunelib_llama_adapter.safetensors"
    fp32, bf16 = tensors(default, name), tensors(off, name)
    assert {t.dtype for t in fp32.values()} == {torch.float32}
    scales = [k for k in fp32 if k.endswith("adapter_scale")]
    norms = [k for k in fp32 if k.endswith("norm.weight")]
    assert scales and norms
    # A scale starts at 1, where bf16's steps are 2^-8 and 2^-7: a 1e-4 update never shows.
    assert all((fp32[k] != 1).all() for k in scales)
    assert all((bf16[k] == 1).all() for k in scales)
    base = load_file(folder / "model.safetensors")
    assert all((fp32[k] != base[k].to(torch.bfloat16).float()).any() for k in norms)
    # The folded folder holds the base's dtype, the fp32-trained norms rounded into it.
    assert {t.dtype for t in tensors(default, "merged/model.safetensors").values()} == {torch.bfloat16}


def full_runs(tune, folder, tmp_path, *runs: tuple[str, ...]):
    common = ("optimizer._component_=torch.optim.AdamW", "optimizer.lr=1e-5", "optimizer_in_bwd=False",
              "max_steps_per_epoch=3")
    results = [finetune(tune, *FULL, folder, tmp_path / f"run{i}", *common, *extra) for i, extra in enumerate(runs)]
    assert all(r.code == 0 for r in results), [r.err[-2000:] for r in results]
    return results


def moved_weights(run, folder) -> float:
    """The share of bf16-rounded weights of one matrix that differ from the base's."""
    key = "model.layers.0.mlp.down_proj.weight"
    got, base = tensors(run, "model.safetensors")[key], load_file(folder / "model.safetensors")[key]
    return (got.to(torch.bfloat16) != base.to(torch.bfloat16)).float().mean().item()


@pytest.mark.slow
def test_fp32_master_weights_store_fp32_and_follow_the_fp32_run(tune, folder, tmp_path):
    fp32_run, bf16_run, master = full_runs(tune, folder, tmp_path, (), (BF16,), (BF16, "weight_precision=fp32_master"))
    assert {t.dtype for t in tensors(master, "model.safetensors").values()} == {torch.float32}
    assert json.loads((master.output_dir / "final/config.json").read_text()).get("dtype", "float32") == "float32"
    assert {t.dtype for t in tensors(bf16_run, "model.safetensors").values()} == {torch.bfloat16}
    # In bf16 most 1e-5 updates round away; fp32 masters keep them, as the fp32 run does.
    assert moved_weights(bf16_run, folder) < 0.1
    assert moved_weights(master, folder) > 0.8 * moved_weights(fp32_run, folder)
    # Computed in bf16, so not the fp32 losses, but the drift of rounded-away updates is gone.
    assert abs(master.losses[-1] - fp32_run.losses[-1]) < abs(bf16_run.losses[-1] - fp32_run.losses[-1]) / 3


@pytest.mark.slow
def test_stochastic_rounding_keeps_small_updates_in_bf16_weights(tune, folder, tmp_path):
    torchao_adam = ("optimizer._component_=torchao.optim.AdamW8bit", BF16)
    nearest, stochastic = full_runs(tune, folder, tmp_path, torchao_adam,
                                    (*torchao_adam, "weight_precision=stochastic_rounding"))
    assert {t.dtype for t in tensors(stochastic, "model.safetensors").values()} == {torch.bfloat16}
    assert moved_weights(nearest, folder) < 0.1
    assert moved_weights(stochastic, folder) > 2 * moved_weights(nearest, folder)


@pytest.mark.parametrize("recipe, overrides, message", [
    (LORA, ("dtype=fp32", "adapter_dtype=bf16"), "adapter_dtype=bf16 with dtype=fp32"),
    (FULL, ("dtype=fp32", "weight_precision=fp32_master"), "weight_precision=fp32_master changes how bf16"),
    (FULL, (BF16, "weight_precision=stochastic_rounding", "optimizer._component_=torch.optim.AdamW"),
     "weight_precision=stochastic_rounding needs one of torchao's Adam optimizers"),
    (FULL, (BF16, "optimizer.bf16_stochastic_round=True"), "optimizer.bf16_stochastic_round is set by weight_precision"),
], ids=["bf16-adapters-on-fp32", "master-in-fp32", "stochastic-rounding-torch-adamw", "optimizer-flag"])
def test_precision_settings_that_would_do_nothing_are_refused(tune, folder, tmp_path, recipe, overrides, message):
    run = finetune(tune, *recipe, folder, tmp_path / "out", *overrides)
    code, _, err = tune("validate", recipe[1], *words(folder, tmp_path / "out", None, overrides))
    for code, err in ((run.code, run.err), (code, err)):
        last = err.strip().splitlines()[-1]
        assert code == 2 and last.startswith("tune: error: ") and message in last, err
    assert not (tmp_path / "out").exists()
