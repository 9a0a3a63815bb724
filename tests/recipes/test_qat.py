"""`tune run qat_single_device` and `qat_lora_finetune_single_device` on a tiny model: fake quantization
changes training once it starts, the saved folder holds plain trained weights that transformers loads,
`tune run quantize` with the same quantizer writes what training simulated, and resume is exact."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from support.models import load_hf_model
from support.recipes import Result, tiny_model_folder, words

QAT = ("qat_single_device", "llama3_2/1B_qat_full")
FULL = ("full_finetune_single_device", "llama3_2/1B_full")
QAT_LORA = ("qat_lora_finetune_single_device", "llama3_2/1B_qat_lora_tunelib")
LORA = ("lora_finetune_single_device", "llama3_2/1B_lora_tunelib")
ADAMW = ("optimizer._component_=torch.optim.AdamW", "optimizer_in_bwd=False", "optimizer.lr=1e-3")
GROUPS = "quantizer.groupsize=32"  # the tiny model's linears take 64, 96 and 128 inputs
FAST_LORA = ("lr_scheduler.num_warmup_steps=0", "optimizer.lr=3e-3")
IDS = torch.randint(0, 700, (2, 11), generator=torch.Generator().manual_seed(0))


def run(recipe: str, config: str, folder, out, *overrides: str) -> Result:
    """`tune run` in this process, without capturing (module-scoped fixtures share these runs)."""
    from tunelib.cli.main import main

    code = main(["run", recipe, "--config", config, *words(folder, out, None, overrides)])
    return Result(code, "", "", out)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("models"), "llama3_2")


@pytest.fixture(scope="module")
def qat(folder, tmp_path_factory):
    """Four steps, fake quantization from the third on."""
    result = run(*QAT, folder, tmp_path_factory.mktemp("qat") / "out", *ADAMW, GROUPS, "fake_quant_after_n_steps=2")
    assert result.code == 0
    return result


def test_fake_quantization_changes_the_loss_once_it_starts(qat, folder, tmp_path):
    plain = run(*FULL, folder, tmp_path / "plain", *ADAMW)
    assert plain.code == 0
    assert qat.losses[:2] == pytest.approx(plain.losses[:2], abs=1e-6)  # steps 1-2: plain numbers
    assert all(abs(a - b) > 1e-4 for a, b in zip(qat.losses[2:], plain.losses[2:]))
    assert qat.losses[-1] < qat.losses[0]


def test_the_saved_folder_holds_the_plain_trained_weights(qat, folder):
    import tunelib.checkpoint

    final = qat.output_dir / "final"
    with torch.no_grad():
        theirs = load_hf_model(final)(IDS).logits
        ours = tunelib.checkpoint.from_pretrained(final, dtype=torch.float32)(IDS)  # no fake quantization
        base = load_hf_model(folder)(IDS).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    assert (theirs - base).abs().max() > 1e-3
    weight = load_file(final / "model.safetensors")["model.layers.0.mlp.down_proj.weight"]
    assert weight[0, :32].unique().numel() > 16  # not rounded to int4's 16 levels: the trained values


def test_quantize_with_the_same_quantizer_computes_what_training_simulated(tune, qat, tmp_path):
    import tunelib.checkpoint
    from tunelib.generation import load_model
    from tunelib.quantization import Int8DynActInt4WeightQATQuantizer, qat as fake

    out = tmp_path / "int4"
    code, _, err = tune("run", "quantize", "--config", "quantization", f"checkpoint_dir={qat.output_dir / 'final'}",
                        f"output_dir={out}", "device=cpu", "quantizer._component_="
                        "torchtune.training.quantization.Int8DynActInt4WeightQATQuantizer", GROUPS)
    assert code == 0, err
    trained = tunelib.checkpoint.from_pretrained(qat.output_dir / "final", dtype=torch.float32)
    fake.prepare(trained, Int8DynActInt4WeightQATQuantizer(groupsize=32))
    with torch.no_grad():
        simulated, quantized = trained(IDS), load_model(out, device="cpu").model(IDS)
        theirs = load_hf_model(out)(IDS).logits  # transformers + torchao read the same folder
    torch.testing.assert_close(quantized, simulated, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(theirs, quantized, atol=1e-5, rtol=1e-5)
    code, text, err = tune("run", "generate", "--config", "generation", f"checkpoint_dir={out}", "prompt=Hi",
                           "max_new_tokens=4", "device=cpu", "seed=0")
    assert code == 0 and text.strip() and "Int8DynamicActivationIntxWeightConfig" in err, err


def test_quantize_refuses_group_sizes_training_did_not_use(tune, qat, tmp_path):
    code, _, err = tune("run", "quantize", "--config", "quantization", f"checkpoint_dir={qat.output_dir / 'final'}",
                        f"output_dir={tmp_path / 'q'}", "device=cpu",
                        "quantizer._component_=tunelib.quantization.Int8DynActInt4WeightQATQuantizer",
                        "quantizer.groupsize=256")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "groupsize=256 does not divide the 64 inputs" in err and not (tmp_path / "q").exists()


def test_int4_weight_only_trains_on_the_cpu_and_quantizing_it_needs_cuda(tune, folder, tmp_path):
    import shlex

    int4 = "quantizer._component_=tunelib.quantization.Int4WeightOnlyQATQuantizer"
    code, out, err = tune("run", QAT[0], "--config", QAT[1],
                          *words(folder, tmp_path / "out", None, (*ADAMW, int4, GROUPS)))
    result = Result(code, out, err, tmp_path / "out")
    assert result.code == 0 and result.losses[-1] < result.losses[0], err
    hint = next(line for line in out.splitlines() if "quantize it:" in line)  # the run's last words
    command = shlex.split(hint.split("quantize it:", 1)[1])
    assert command[:2] == ["tune", "run"] and f"checkpoint_dir={tmp_path / 'out/final'}" in command
    if torch.cuda.is_available():
        pytest.skip("the CPU refusal is what this test checks; CUDA quantizes int4")
    code, _, err = tune(*command[1:], "device=cpu")
    assert code == 2 and "needs a CUDA GPU" in err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="int4 weight-only quantization runs on CUDA only (tinygemm)")
def test_int4_weight_only_quantizes_on_cuda(tune, folder, tmp_path):
    int4 = "quantizer._component_=tunelib.quantization.Int4WeightOnlyQATQuantizer"
    assert run(*QAT, folder, tmp_path / "out", *ADAMW, int4, GROUPS).code == 0
    code, _, err = tune("run", "quantize", "--config", "quantization", f"checkpoint_dir={tmp_path / 'out/final'}",
                        "device=cuda", int4, GROUPS)
    assert code == 0, err


def test_qat_lora_writes_an_adapter_and_a_merged_folder_transformers_loads(folder, tmp_path):
    plain = run(*LORA, folder, tmp_path / "plain", *FAST_LORA)
    result = run(*QAT_LORA, folder, tmp_path / "out", *FAST_LORA, GROUPS, "enable_activation_checkpointing=True")
    assert plain.code == 0 and result.code == 0
    # Step 1 of LoRA is the base model's loss (B = 0); QAT's is the fake-quantized base's.
    assert abs(result.losses[0] - plain.losses[0]) > 1e-4
    assert result.losses[-1] < result.losses[0]
    final = tmp_path / "out/final"
    assert (final / "adapter/adapter_model.safetensors").is_file()
    with torch.no_grad():
        merged, base = load_hf_model(final / "merged")(IDS).logits, load_hf_model(folder)(IDS).logits
    assert (merged - base).abs().max() > 1e-4


def test_qat_lora_refuses_nf4_base_weights_in_one_line(tune, folder, tmp_path):
    code, _, err = tune("run", QAT_LORA[0], "--config", QAT_LORA[1],
                        *words(folder, tmp_path / "out", None, (GROUPS, "model.quantize_base=True")))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "quantize_base=False" in err
    assert not (tmp_path / "out").exists()


def test_resume_continues_exactly_across_the_start_of_fake_quantization(folder, tmp_path):
    settings = (*ADAMW, GROUPS, "fake_quant_after_n_steps=3", "save_every_n_steps=2", "seed=3")
    straight = run(*QAT, folder, tmp_path / "a", *settings)
    assert straight.code == 0
    shutil.copytree(tmp_path / "a/step_2", tmp_path / "b/step_2")  # as if the run had died after step 2
    resumed = run(*QAT, folder, tmp_path / "b", *settings, "resume_from_checkpoint=True")
    assert resumed.code == 0
    assert [m["step"] for m in resumed.metrics] == [3, 4]
    assert resumed.losses == straight.losses[2:]
    a, b = load_file(tmp_path / "a/final/model.safetensors"), load_file(tmp_path / "b/final/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_torchtune_quantization_file_quantizes_with_its_quantizer(tune, qat, tmp_path):
    final, out = qat.output_dir / "final", tmp_path / "quantized"
    config = tmp_path / "quantization.yaml"  # torchtune's quantization.yaml, pointed at the QAT output
    config.write_text(f"""output_dir: {out}
checkpointer:
  _component_: torchtune.training.FullModelHFCheckpointer
  checkpoint_dir: {final}
  checkpoint_files: [model.safetensors]
  recipe_checkpoint: null
  output_dir: ${{output_dir}}
  model_type: LLAMA3_2
device: cpu
dtype: fp32
seed: 1234
quantizer:
  _component_: torchtune.training.quantization.Int8DynActInt4WeightQuantizer
  groupsize: 32
""")
    code, text, err = tune("run", "quantize", "--config", str(config))
    assert code == 0, err
    assert "Quantized model (8da4w)" in text and (out / "model.safetensors").is_file()


@pytest.mark.parametrize("overrides, message", [
    (("scheme=int8", "quantizer._component_=tunelib.quantization.Int8DynActInt4WeightQATQuantizer"),
     "scheme=int8 and quantizer both say how to quantize; remove scheme"),
    (("group_size=64",), "group_size=64 is read only with scheme=int4"),
])
def test_quantize_takes_one_way_of_saying_how(tune, overrides, message):
    code, _, err = tune("validate", "quantization", *overrides)
    assert code == 2 and message in err


def test_mixture_of_experts_models_are_refused_by_qat_and_quantize(tune, tmp_path, capsys):
    """QAT rounds nn.Linear weights: a MoE's stacked experts would stay unrounded and its router rounded,
    the opposite of what it should do; both commands say so in one line, before any step."""
    moe = tiny_model_folder(tmp_path / "m", "qwen3_moe")
    capsys.readouterr()  # transformers' progress bar while the folder was written
    code, _, err = tune("run", QAT[0], "--config", QAT[1], *words(moe, tmp_path / "qat", None, (*ADAMW, GROUPS)))
    assert code == 2 and "QAT does not reach mixture-of-experts layers" in err and err.count("\n") == 1, err
    assert not (tmp_path / "qat").exists()
    code, _, err = tune("run", "quantize", "--config", "quantization", f"checkpoint_dir={moe}",
                        f"output_dir={tmp_path / 'q'}", "device=cpu")
    assert code == 2 and "mixture-of-experts model" in err and err.count("\n") == 1, err
    assert not (tmp_path / "q").exists()


def test_resuming_with_another_quantizer_says_so(folder, tmp_path, capfd):
    settings = (*ADAMW, "save_every_n_steps=2", "max_steps_per_epoch=3")
    first = run(*QAT, folder, tmp_path / "out", *settings, GROUPS)
    assert first.code == 0
    shutil.rmtree(tmp_path / "out/final")  # as if the run had died after step 2
    capfd.readouterr()
    resumed = run(*QAT, folder, tmp_path / "out", *settings, "quantizer.groupsize=16", "resume_from_checkpoint=True")
    assert resumed.code == 0
    err = capfd.readouterr().err
    assert "Warning: resuming with quantizer changed" in err and "'groupsize': 32" in err and "'groupsize': 16" in err
