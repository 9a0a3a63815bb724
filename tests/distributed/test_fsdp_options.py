"""FSDP2's options through `tune run --nproc_per_node N` (gloo on CPU): gradients reduced once per
step under accumulation, CPU offload, keeping gathered layers, HSDP on a 2-D mesh. Each run must
give the one-device losses; what the options change is counted collective by collective (see
support/collectives.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from support.recipes import Result, tiny_model_folder, torchrun_finetune, words
from tunelib.errors import ConfigError
from tunelib.training.distributed import mesh_shape

REPO = Path(__file__).resolve().parents[2]
CONFIG = "llama3_1/8B_full_tunelib"
# Full fine-tuning, so every weight's gradient is reduced; two micro-batches per step.
SETTINGS = ("optimizer._component_=torch.optim.AdamW", "optimizer.lr=1e-3", "optimizer_in_bwd=False",
            "gradient_accumulation_steps=2")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("models"), "llama3_1")


@pytest.fixture(scope="module")
def units(folder) -> tuple[int, int]:
    """(gradient reduce-scatters per step, decoder layers): one per layer, one each for the
    (untied) embedding and lm_head, and two for the root, which holds the final norm and is
    called twice in a step (for the hidden states, then for the logits)."""
    config = json.loads((folder / "config.json").read_text())
    assert not config.get("tie_word_embeddings"), "a tied embedding stays in the root unit"
    layers = config["num_hidden_layers"]
    return layers + 4, layers


@pytest.fixture(scope="module")
def one(folder, tmp_path_factory):
    """One process, batch 4: the global batch of 2 x 2 and of 4 x 1 processes."""
    from tunelib.cli.main import main

    out = tmp_path_factory.mktemp("one") / "out"
    assert main(["run", "full_finetune_single_device", "--config", CONFIG,
                 *words(folder, out, None, (*SETTINGS, "batch_size=4"))]) == 0
    return Result(0, "", "", out).losses, load_file(out / "final/model.safetensors")


@pytest.fixture
def support_env(monkeypatch):
    """Let the ranks (children of torchrun) import the counting loss from tests/support."""
    monkeypatch.setenv("PYTHONPATH", f"{REPO / 'tests'}")
    monkeypatch.setenv("TUNELIB_ALLOW_MODULES", "support")


def counting_loss(record: Path) -> str:
    return f"loss={{_component_: support.collectives.CollectiveCountingLoss, record_dir: {record}}}"


def per_micro_batch(record: Path, rank: int, kind: str) -> list[int]:
    """How many `kind` collectives rank `rank` started between one training micro-batch and the next."""
    entries = json.loads((record / f"rank{rank}.json").read_text())
    return [b[kind] - a[kind] for a, b in zip(entries, entries[1:])]


def held(record: Path, rank: int) -> set[float]:
    return {e["held"] for e in json.loads((record / f"rank{rank}.json").read_text())}


def close(a: list[float], b: list[float], tol: float = 1e-5) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b))


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("shard, replicate, world, shape", [(-1, 1, 2, (1, 2)), (-1, 2, 16, (2, 8)),
                                                           (8, 2, 16, (2, 8)), (4, 1, 4, (1, 4))])
def test_mesh_shape_takes_the_rest_of_the_world_for_shard_dim_minus_one(shard, replicate, world, shape):
    assert mesh_shape(world, shard, replicate) == shape


@pytest.mark.parametrize("shard, replicate, world, says", [
    (-1, 3, 4, "data_parallel_replicate_dim=3 and data_parallel_shard_dim=-1: the world size 4 is not a multiple of 3"),
    (4, 2, 4, "data_parallel_replicate_dim=2 and data_parallel_shard_dim=4 multiply to 8, but the world size"),
])
def test_mesh_dims_that_do_not_multiply_to_the_world_size_are_refused(shard, replicate, world, says):
    with pytest.raises(ConfigError, match=says):
        mesh_shape(world, shard, replicate)


def test_mesh_dims_below_one_are_refused_before_anything_runs(tune, folder, tmp_path):
    dims = ("data_parallel_shard_dim=0", "data_parallel_replicate_dim=0")
    code, _, err = tune("run", "full_finetune_single_device", "--config", CONFIG, *words(folder, tmp_path / "out", None, dims))
    assert code == 2
    assert "data_parallel_shard_dim=0; use 1 or more, or -1 for the rest of the world size" in err
    assert "data_parallel_replicate_dim=0; use 1 or more" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.distributed
def test_accumulation_reduces_gradients_once_per_step_and_matches_one_device(one, folder, units, tmp_path, support_env):
    record = tmp_path / "record"
    two = torchrun_finetune(2, "full_finetune_distributed", CONFIG, folder, tmp_path / "two", *SETTINGS,
                            "batch_size=2", counting_loss(record))
    assert two.code == 0, two.err[-3000:]
    losses, weights = one
    assert close(two.losses, losses), (losses, two.losses)
    assert max_difference(load_file(tmp_path / "two/final/model.safetensors"), weights) < 1e-5
    n, layers = units
    for rank in (0, 1):
        # 4 steps of 2 micro-batches: nothing is reduced after the first of a step, each unit once after the last.
        assert per_micro_batch(record, rank, "reduce_scatter") == [0, n, 0, n, 0, n, 0]
        # fsdp_reshard_after_forward=True (default): each layer, the embedding and the root are
        # gathered again in backward (lm_head stays gathered from the loss through its backward).
        assert per_micro_batch(record, rank, "all_gather") == [2 * layers + 5] * 7


@pytest.mark.slow
@pytest.mark.distributed
def test_hsdp_on_a_two_by_two_mesh_matches_one_device(one, folder, units, tmp_path, support_env):
    record = tmp_path / "record"
    four = torchrun_finetune(4, "full_finetune_distributed", CONFIG, folder, tmp_path / "four", *SETTINGS,
                             "batch_size=1", "data_parallel_replicate_dim=2", counting_loss(record))
    assert four.code == 0, four.err[-3000:]
    losses, weights = one
    assert close(four.losses, losses), (losses, four.losses)
    assert max_difference(load_file(tmp_path / "four/final/model.safetensors"), weights) < 1e-5
    n, _ = units
    for rank in range(4):
        assert held(record, rank) == {0.5}  # sharded over 2 processes, not 4
        assert per_micro_batch(record, rank, "reduce_scatter") == [0, n, 0, n, 0, n, 0]
        assert per_micro_batch(record, rank, "all_reduce") == [0, n, 0, n, 0, n, 0]  # across the 2 replicas


@pytest.mark.slow
@pytest.mark.distributed
def test_memory_options_change_communication_not_losses(one, folder, units, tmp_path, support_env):
    record = tmp_path / "record"
    four = torchrun_finetune(4, "full_finetune_distributed", CONFIG, folder, tmp_path / "four", *SETTINGS,
                             "batch_size=1", "data_parallel_replicate_dim=2", "fsdp_cpu_offload=True",
                             "fsdp_reshard_after_forward=False", "fsdp_gradient_sync=every_micro_batch",
                             counting_loss(record))
    assert four.code == 0, four.err[-3000:]
    losses, _ = one
    assert close(four.losses, losses), (losses, four.losses)
    n, _ = units
    for rank in range(4):
        assert per_micro_batch(record, rank, "all_gather") == [n] * 7  # layers kept gathered for backward
        # Gradients stay sharded: every unit reduces after every micro-batch, the root once here
        # (gathered once per micro-batch when nothing reshards after forward).
        assert per_micro_batch(record, rank, "reduce_scatter") == [n - 1] * 7
        assert per_micro_batch(record, rank, "all_reduce") == [0, n - 1, 0, n - 1, 0, n - 1, 0]  # across nodes once a step


@pytest.mark.slow
@pytest.mark.distributed
def test_mesh_dims_that_do_not_fit_the_world_size_end_the_run_with_a_message(folder, tmp_path):
    two = torchrun_finetune(2, "full_finetune_distributed", CONFIG, folder, tmp_path / "two", *SETTINGS,
                            "data_parallel_replicate_dim=3")
    assert two.code == 2
    assert ("tune: error: data_parallel_replicate_dim=3 and data_parallel_shard_dim=-1: the world size 2 is not a "
            "multiple of 3") in two.err
    assert "Traceback" not in two.err
