"""torchtune's `_component_` paths are understood through one table (issue 16, point 1).

A torchtune name stands for a tunelib path plus what the name implies (`qlora_*`:
quantize_base=True); one with no equivalent is refused in one line that says what to use, and
the allow-list applies to what a name translates to.
"""

from __future__ import annotations

import sys

import pytest

from tunelib.config import instantiate, torchtune_names
from tunelib.config.checks import check_component
from tunelib.config.components import resolve
from tunelib.errors import ConfigError
from tunelib.models import builders


@pytest.mark.parametrize("name", sorted(builders()))
def test_every_tunelib_builder_has_its_torchtune_names(name):
    family = builders()[name].__module__.rsplit(".", 1)[1]
    family = {"qwen3_moe": "qwen3"}.get(family, family)  # torchtune keeps its Qwen3-MoE builders with Qwen3's
    for prefix in ("", "lora_", "qlora_"):
        assert resolve(f"torchtune.models.{family}.{prefix}{name}") is builders()[name]


@pytest.mark.parametrize("path, ours, implied", [
    ("torchtune.models.llama3_1.qlora_llama3_1_8b", "tunelib.models.llama3_1.llama3_1_8b", {"quantize_base": True}),
    ("torchtune.models.qwen2_5.lora_qwen2_5_7b_instruct", "tunelib.models.qwen2_5.qwen2_5_7b", {}),
    ("torchtune.models.qwen2_5.qlora_qwen2_5_1_5b_base", "tunelib.models.qwen2_5.qwen2_5_1_5b", {"quantize_base": True}),
    ("torchtune.models.code_llama2.lora_code_llama2_7b", "tunelib.models.from_hf_config", {}),
    ("torchtune.training.FullModelHFCheckpointer", "tunelib.training.HFCheckpointer", {}),
    ("torchtune.modules.loss.CEWithChunkedOutputLoss", "tunelib.training.LinearCrossEntropyLoss", {}),
    ("torchtune.training.lr_schedulers.get_cosine_schedule_with_warmup",
     "tunelib.training.get_cosine_schedule_with_warmup", {}),
    ("torchtune.training.metric_logging.DiskLogger", "tunelib.training.DiskLogger", {}),
    ("torchtune.datasets.alpaca_cleaned_dataset", "tunelib.data.alpaca_cleaned_dataset", {}),
    ("torchtune.models.llama3.llama3_tokenizer", "tunelib.tokenizers.llama3_tokenizer", {}),
    ("torchtune.training.setup_torch_profiler", "tunelib.training.setup_torch_profiler", {}),
])
def test_a_torchtune_node_becomes_tunelib_s(path, ours, implied):
    node = torchtune_names.translate_node({"_component_": path, "lora_rank": 8})
    assert node == {"_component_": ours, "lora_rank": 8, **implied}


def test_qlora_builds_with_quantize_base_and_refuses_a_contradiction():
    node = {"_component_": "torchtune.models.llama3_2.qlora_llama3_2_1b", "lora_attn_modules": ["q_proj"]}
    assert check_component(node, "model", ("checkpoint_dir",)) == []
    problems = check_component({**node, "quantize_base": False}, "model", ("checkpoint_dir",))
    assert len(problems) == 1 and "quantize_base=False contradicts" in problems[0]


def test_torchtune_argument_names_are_renamed():
    node = {"_component_": "torchtune.models.phi4.phi4_tokenizer", "vocab_path": "/m/vocab.json",
            "merges_path": "/m/merges.txt", "max_seq_len": 8}
    assert torchtune_names.translate_node(node) == {
        "_component_": "tunelib.tokenizers.phi4_tokenizer", "path": "/m/vocab.json", "merges_file": "/m/merges.txt",
        "max_seq_len": 8}
    assert check_component(node, "tokenizer", ()) == []


@pytest.mark.parametrize("path, says", [
    ("torchtune.models.llama3_2_vision.lora_llama3_2_vision_11b", "llama3_2.lora_llama3_2_3b"),
    ("torchtune.models.llama4.llama4_scout_17b_16e", "Llama 3.x"),
    ("torchtune.training.quantization.Int8MixedPrecisionTrainingQuantizer", "Int8DynActInt4WeightQATQuantizer"),
    ("torchtune.training.FullModelMetaCheckpointer", "FullModelHFCheckpointer"),
    ("torchtune.models.mistral._component_builders.mistral_classifier", "reward"),
    ("torchtune.rlhf.loss.PPOLoss", "PPO"),
])
def test_no_equivalent_is_one_line_saying_what_to_use(path, says):
    with pytest.raises(ConfigError) as e:
        resolve(path, "model._component_")
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"model._component_: {path} is not supported")
    assert says in message


def test_an_unknown_torchtune_name_is_refused_without_allow_module():
    with pytest.raises(ConfigError) as e:
        resolve("torchtune.models.llama3.not_a_builder")
    assert "torchtune name tunelib does not know" in str(e.value) and "allow-module" not in str(e.value)


def test_the_allow_list_applies_to_what_a_name_translates_to(monkeypatch):
    table = dict(torchtune_names.table())
    table["torchtune.training.cleanup"] = torchtune_names.Equivalent("shutil.rmtree")
    monkeypatch.setattr(torchtune_names, "table", lambda: table)
    with pytest.raises(ConfigError, match="'shutil.rmtree' is not in an allowed module"):
        resolve("torchtune.training.cleanup")


def test_bitsandbytes_missing_names_what_to_install_or_use():
    if "bitsandbytes" in sys.modules or _installed("bitsandbytes"):
        pytest.skip("bitsandbytes is installed here")
    with pytest.raises(ConfigError) as e:
        resolve("bitsandbytes.optim.PagedAdamW8bit", "optimizer._component_")
    assert str(e.value) == ("optimizer._component_: bitsandbytes.optim.PagedAdamW8bit needs bitsandbytes, which is "
                            "not installed: pip install bitsandbytes, or use torchao.optim.AdamW8bit")


@pytest.fixture
def stand_in_bitsandbytes(tmp_path, monkeypatch):
    """A package with bitsandbytes' path, gone again after the test."""
    (tmp_path / "bitsandbytes").mkdir()
    (tmp_path / "bitsandbytes/__init__.py").write_text("")
    (tmp_path / "bitsandbytes/optim.py").write_text(
        "import torch\n\nclass PagedAdamW8bit(torch.optim.AdamW):\n    pass\n\ndef anything_else():\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    saved = {name: sys.modules.pop(name) for name in ("bitsandbytes", "bitsandbytes.optim") if name in sys.modules}
    yield
    for name in ("bitsandbytes", "bitsandbytes.optim"):
        sys.modules.pop(name, None)
    sys.modules.update(saved)


def test_bitsandbytes_optimizers_work_when_installed(stand_in_bitsandbytes):
    # Trusted by exact name, with no --allow-module; other names of the package are not.
    import torch

    optimizer = instantiate({"_component_": "bitsandbytes.optim.PagedAdamW8bit", "lr": 1e-3},
                            [torch.nn.Parameter(torch.zeros(2))])
    assert type(optimizer).__name__ == "PagedAdamW8bit"
    with pytest.raises(ConfigError, match="not in an allowed module"):
        resolve("bitsandbytes.optim.anything_else")


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
