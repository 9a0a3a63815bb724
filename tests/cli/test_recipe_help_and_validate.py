"""`tune run RECIPE --help` lists the recipe's settings; `tune validate` picks the recipe `tune run`
would get and refuses what it would refuse before its first step (issue 17, point 9)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tunelib.config.schema import schema_fields
from tunelib.training.settings import AdapterSettings, FullSettings, LoRASettings

REPO = Path(__file__).resolve().parents[2]
LORA_YAML = REPO / "recipes/configs/llama3_2/1B_lora_tunelib.yaml"


def _without_comments(path: Path, dest: Path) -> Path:
    dest.write_text("".join(line for line in path.read_text().splitlines(keepends=True)
                            if not line.lstrip().startswith("#")))
    return dest


@pytest.mark.parametrize(("recipe", "schema"), [("lora_finetune_single_device", LoRASettings),
                                                 ("full_finetune_distributed", FullSettings),
                                                 ("adapter_finetune_single_device", AdapterSettings)])
def test_recipe_help_lists_every_setting_with_type_default_and_doc(tune, recipe, schema):
    code, out, err = tune("run", recipe, "--help")
    assert code == 0 and not err
    assert out.startswith(f"usage: tune run {recipe} --config CONFIG")
    for name, info in schema_fields(schema).items():
        assert re.search(rf"^  {name}: .+", out, re.MULTILINE), f"{name} missing from the help"
        assert info.doc in out
    assert "  batch_size: int = 2\n" in out
    assert "  output_dir: str (required)\n" in out
    assert "  dtype: 'fp32' | 'bf16' = 'bf16'\n" in out
    assert "  seed: int | None = None\n" in out


def test_a_users_lora_file_is_checked_as_lora_not_as_an_adapter_file(tune, tmp_path):
    mine = _without_comments(LORA_YAML, tmp_path / "mine.yaml")
    code, out, _ = tune("validate", str(mine))
    assert code == 0
    assert "well-formed for recipe lora_finetune_single_device (the only recipe it fits" in out
    # The recipe a `tune run NAME` comment names (torchtune's files have one) is the one checked.
    shutil.copy(LORA_YAML, tmp_path / "commented.yaml")
    code, out, _ = tune("validate", str(tmp_path / "commented.yaml"))
    assert code == 0 and "well-formed for recipe lora_finetune_single_device (named in commented.yaml's comments" in out


@pytest.mark.parametrize(("recipe", "message"), [
    ("adapter_finetune_single_device", "this recipe trains a LLaMA-Adapter but the model config adds none"),
    ("full_finetune_single_device", "the model config asks for adapters (lora_* or adapter keys)"),
])
def test_validate_refuses_a_recipe_whose_run_would_refuse_the_file(tune, recipe, message):
    code, out, err = tune("validate", "llama3_2/1B_lora_tunelib", "--recipe", recipe)
    assert code == 2 and "well-formed" not in out and message in err


@pytest.mark.parametrize(("override", "message"), [
    ("optimizer.lr=-1e-4", "optimizer (torch.optim.AdamW) refused its settings: Invalid learning rate"),
    ("model.lora_attn_modules=[q_proj,x_proj]", "lora_attn_modules: unknown module 'x_proj'"),
])
def test_values_refused_when_built_are_refused_by_validate(tune, override, message):
    code, out, err = tune("validate", "llama3_2/1B_lora_tunelib", override)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_fold_adapter_v2_with_v1_is_a_config_problem(tune):
    code, _, err = tune("validate", "llama3_2/1B_adapter", "fold_adapter_v2=True")
    assert code == 2 and "fold_adapter_v2=True needs model.adapter=v2" in err


def test_a_missing_model_folder_is_a_note_not_a_failure(tune):
    code, out, _ = tune("validate", "llama3_2/1B_lora_tunelib", "checkpoint_dir=/nonexistent/Llama-3.2-1B")
    assert code == 0 and "Note: checkpoint_dir /nonexistent/Llama-3.2-1B does not exist yet" in out


def test_a_file_that_fits_several_recipes_asks_for_one(tune, fake_recipes, tmp_path):
    # The test recipes folder has one recipe file; a second copy under another name fits the same files.
    source = (fake_recipes / "train.py").read_text()
    (fake_recipes / "train_again.py").write_text(source.replace('"train_single_device", "train_distributed"',
                                                                '"train_again",'))
    mine = _without_comments(fake_recipes / "configs/tiny/1B_lora.yaml", tmp_path / "mine.yaml")
    code, out, err = tune("validate", str(mine))
    assert code == 2 and "fits more than one recipe" in err and "--recipe NAME" in err
    code, out, _ = tune("validate", str(mine), "--recipe", "train_again")
    assert code == 0 and "well-formed for recipe train_again." in out
