"""Memory that scales (issue 13): each rank loads only its shard, saves stream one layer at a
time, one device holds the weights once (not mapped from the files), and a bad input under
torchrun is still one line. Peak resident memory comes from the kernel (VmHWM), per phase,
through the benchmark's recipe (benchmarks/tunebench/memory_recipe.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from support.recipes import finetune, tiny_model_folder, torchrun_finetune, words

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "benchmarks/tunebench/memory_recipe.py"
LORA = ("lora_finetune_distributed", "llama3_1/8B_lora_tunelib")
ALL_LINEARS = ("model.lora_attn_modules=[q_proj,k_proj,v_proj,o_proj]", "model.apply_lora_to_mlp=True")
MIB = 2**20


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """About 100 MiB of fp32 weights: large beside a process's fixed costs, small for CI."""
    return tiny_model_folder(tmp_path_factory.mktemp("m"), "llama3_1", hidden_size=512, intermediate_size=1536,
                             num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4)


def _weights_bytes(folder: Path) -> int:
    return sum(t.numel() * t.element_size() for t in load_file(folder / "model.safetensors").values())


def _memory_run(folder: Path, out: Path, nproc: int, *overrides: str) -> list[dict]:
    """The memory recipe on `folder`; returns each rank's phases in GiB."""
    launch = ["--nproc_per_node", str(nproc)] if nproc > 1 else []
    cmd = [sys.executable, "-m", "tunelib.cli.main", "run", *launch, str(RECIPE), "--config", LORA[1],
           *words(folder, out, None, ("max_steps_per_epoch=1", "batch_size=1", *overrides))]
    env = dict(os.environ, PYTHONPATH=f"{REPO / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((out / f"memory_rank{r}.json").read_text()) for r in range(nproc)]


@pytest.mark.slow
@pytest.mark.distributed
def test_each_of_two_ranks_loads_only_its_half(folder, tmp_path):
    weights = _weights_bytes(folder)
    ranks = _memory_run(folder, tmp_path / "out", 2, "+method=lora")
    for rank in ranks:
        loading = (rank["weights"] - rank["before_weights"]) * 2**30
        # Half the weights; the whole model (each rank loading everything) would be 1.0.
        assert loading < 0.75 * weights, f"loading took {loading / MIB:.0f} MiB of {weights / MIB:.0f} MiB of weights"


@pytest.mark.slow
def test_a_merged_save_holds_one_layer_at_a_time(folder, tmp_path):
    weights = _weights_bytes(folder)
    (rank,) = _memory_run(folder, tmp_path / "out", 1, "+method=lora", *ALL_LINEARS)
    saving = (rank["save"] - rank["before_save"]) * 2**30
    # One of 8 layers merged at a time; merging every layer at once would take about 0.9.
    assert saving < 0.35 * weights, f"the save took {saving / MIB:.0f} MiB more, weights {weights / MIB:.0f} MiB"
    assert (tmp_path / "out/final/merged/model.safetensors").is_file()


def test_one_device_keeps_no_mapping_of_the_weight_files(tune, tmp_path):
    folder = tiny_model_folder(tmp_path / "m", "llama3_2")
    from tunelib.checkpoint import load_hf_weights
    from tunelib.models import from_hf_config

    model = load_hf_weights(from_hf_config(str(folder)), folder)
    maps = Path("/proc/self/maps").read_text()
    assert str(folder / "model.safetensors") not in maps  # the weights are in memory of their own
    reference = load_file(folder / "model.safetensors")
    assert torch.equal(model.model.norm.weight, reference["model.norm.weight"])


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("method", ["lora", "full"])
def test_two_ranks_save_the_same_bytes_as_one_device(tmp_path, tune, method):
    folder = tiny_model_folder(tmp_path / "m", "llama3_1")
    config = LORA[1] if method == "lora" else "llama3_1/8B_full_tunelib"
    recipe = "lora_finetune" if method == "lora" else "full_finetune"
    # lr 0: the saved weights must be the base weights exactly, however they were gathered.
    settings = ("optimizer._component_=torch.optim.AdamW", "optimizer.lr=0.0", "lr_scheduler=null",
                "gradient_accumulation_steps=1", "max_steps_per_epoch=2",
                *(ALL_LINEARS if method == "lora" else ("optimizer_in_bwd=False",)))
    one = finetune(tune, f"{recipe}_single_device", config, folder, tmp_path / "one", *settings, "batch_size=4")
    two = torchrun_finetune(2, f"{recipe}_distributed", config, folder, tmp_path / "two", *settings, "batch_size=2")
    assert one.code == 0 and two.code == 0, two.err[-3000:]
    written = "merged/model.safetensors" if method == "lora" else "model.safetensors"
    assert (tmp_path / "one/final" / written).read_bytes() == (tmp_path / "two/final" / written).read_bytes()
    saved, base = load_file(tmp_path / "two/final" / written), load_file(folder / "model.safetensors")
    assert saved.keys() == base.keys() and all(torch.equal(saved[k], base[k]) for k in base)
    if method == "lora":
        adapter = "adapter/adapter_model.safetensors"
        assert (tmp_path / "one/final" / adapter).read_bytes() == (tmp_path / "two/final" / adapter).read_bytes()


@pytest.mark.distributed
@pytest.mark.parametrize("damage", ["mis_shaped", "missing_shard"])
def test_a_bad_model_folder_under_torchrun_is_one_line_and_writes_nothing(tmp_path, damage):
    folder = tiny_model_folder(tmp_path / "m", "llama3_2")
    weights = load_file(folder / "model.safetensors")
    if damage == "mis_shaped":
        weights["model.norm.weight"] = weights["model.norm.weight"][:32].clone()
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
        expected = "weight 'model.norm.weight' has shape (32,) but the model expects (64,)"
    else:  # an index naming a second shard that never arrived
        (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
        index = {"weight_map": {k: f"model-0000{1 + i % 2}-of-00002.safetensors" for i, k in enumerate(weights)}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
        expected = "lists model-00002-of-00002.safetensors, which is not in"
    result = torchrun_finetune(2, *LORA[:1], "llama3_2/1B_lora_tunelib", folder, tmp_path / "out")
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tune: error: ") and expected in lines[0], result.err[-2000:]
    assert not (tmp_path / "out").exists()
