"""`tune ls | cp | cat | validate | run` as a user types them, on a recipes folder made for the tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_help_starts_without_importing_torch():
    code = ("import sys; from tunelib.cli.main import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "main(['ls'])\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "usage: tune" in out and "download" in out
    assert out.strip().endswith("NO-TORCH")


def test_ls_lists_recipes_with_configs(tune, fake_recipes):
    code, out, _ = tune("ls")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["RECIPE", "CONFIG"]
    assert lines[1].split() == ["train_single_device", "tiny/1B_full"]
    assert lines[2].split() == ["tiny/1B_lora"]
    assert any(line.split() == ["train_distributed", "tiny/1B_full"] for line in lines)


def test_ls_filter(tune, fake_recipes):
    code, out, _ = tune("ls", "lora")
    assert code == 0 and "tiny/1B_lora" in out and "1B_full" not in out
    assert "No recipe or config matches" in tune("ls", "nothing")[1]


def test_cp_config_and_recipe(tune, fake_recipes, tmp_path):
    code, out, _ = tune("cp", "tiny/1B_lora", str(tmp_path / "my"))
    assert code == 0 and (tmp_path / "my.yaml").read_text() == (fake_recipes / "configs/tiny/1B_lora.yaml").read_text()
    code, _, _ = tune("cp", "train_single_device", str(tmp_path / "my_recipe.py"))
    assert code == 0 and "NAMES = " in (tmp_path / "my_recipe.py").read_text()
    code, _, _ = tune("cp", "tiny/1B_lora_single_device", str(tmp_path))  # torchtune name, into a folder
    assert code == 0 and (tmp_path / "1B_lora.yaml").is_file()


def test_cp_no_clobber_parents_and_unknown(tune, fake_recipes, tmp_path):
    (tmp_path / "my.yaml").write_text("keep me\n")
    code, out, _ = tune("cp", "-n", "tiny/1B_lora", str(tmp_path / "my.yaml"))
    assert code == 0 and "not overwriting" in out and (tmp_path / "my.yaml").read_text() == "keep me\n"
    code, _, err = tune("cp", "tiny/1B_lora", str(tmp_path / "a/b/c.yaml"))
    assert code == 2 and "--make-parents" in err and not (tmp_path / "a").exists()
    assert tune("cp", "--make-parents", "tiny/1B_lora", str(tmp_path / "a/b/c.yaml"))[0] == 0
    code, _, err = tune("cp", "tiny/1B_lroa", str(tmp_path / "x.yaml"))
    assert code == 2 and "did you mean tiny/1B_lora" in err and not (tmp_path / "x.yaml").exists()


def test_cat_applies_overrides_and_resolves(tune, fake_recipes):
    code, out, _ = tune("cat", "tiny/1B_lora", "batch_size=8", "model.lora_rank=64")
    assert code == 0 and "batch_size: 8" in out and "lora_rank: 64" in out and "_component_" in out
    code, _, err = tune("cat", "tiny/1B_lora", "batch_sise=8")
    assert code == 2 and "did you mean 'batch_size'" in err


def test_validate_shares_the_run_checks(tune, fake_recipes, tmp_path):
    code, out, _ = tune("validate", "tiny/1B_lora", "optimizer.lr=2e-4")
    assert code == 0 and "well-formed for recipe train_single_device" in out
    code, _, err = tune("validate", "tiny/1B_lora", "--model.lora_rnak=8")
    assert code == 2 and "did you mean 'model.lora_rank'" in err and "Traceback" not in err
    my = tmp_path / "my.yaml"
    my.write_text((fake_recipes / "configs/tiny/1B_lora.yaml").read_text() + "epochs: 3\n")
    code, _, err = tune("validate", str(my))
    assert code == 2 and "unknown key 'epochs'" in err


def test_run_in_process_with_overrides(tune, fake_recipes, tmp_path):
    words = ["run", "train_single_device", "--config", "tiny/1B_lora_single_device",
             "--model.lora_attn_modules=[q_proj,", "k_proj,", "v_proj]", "--model.lora_rank=64",
             "batch_size=8", f"output_dir={tmp_path / 'run'}"]
    code, out, err = tune(*words)
    assert code == 0, err
    result = json.loads((tmp_path / "run/rank0.json").read_text())
    assert result["model"]["lora_attn_modules"] == ["q_proj", "k_proj", "v_proj"]
    assert result["model"]["lora_rank"] == 64 and result["batch_size"] == 8
    assert result["model"]["checkpoint_dir"] == "/tmp/model"  # passed by the recipe
    assert result["dataset"]["tokenizer"] == "TOKENIZER"


def test_run_a_copied_recipe_file(tune, fake_recipes, tmp_path):
    tune("cp", "train_single_device", str(tmp_path / "mine.py"))
    tune("cp", "tiny/1B_full", str(tmp_path / "mine.yaml"))
    code, _, err = tune("run", str(tmp_path / "mine.py"), "--config", str(tmp_path / "mine.yaml"),
                        f"output_dir={tmp_path / 'r2'}")
    assert code == 0, err and (tmp_path / "r2/rank0.json").is_file()


@pytest.mark.parametrize("words, message", [
    (["run", "train_singel_device", "--config", "tiny/1B_lora"], "unknown recipe 'train_singel_device' (did you mean train_single_device"),
    (["run", "train_single_device"], "'--config' argument is required"),
    (["run", "train_single_device", "--config", "tiny/1B_lroa"], "unknown config 'tiny/1B_lroa' (did you mean tiny/1B_lora"),
    (["run", "train_single_device", "--config", "nope.yaml"], "config file not found: nope.yaml"),
    (["run", "train_single_device", "--config", "tiny/1B_lora", "batch_size"], "is not an override"),
    (["run", "./missing.py", "--config", "tiny/1B_lora"], "recipe file not found"),
])
def test_bad_input_is_one_line_and_exit_2(tune, fake_recipes, words, message):
    code, out, err = tune(*words)
    assert code == 2 and message in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_error_raised_inside_a_recipe_is_one_line(tune, fake_recipes, tmp_path):
    code, _, err = tune("run", "train_single_device", "--config", "tiny/1B_lora", "batch_size=13",
                        f"output_dir={tmp_path / 'r'}")
    assert code == 2 and err == "tune: error: row 3 has no 'output' field\n"


def test_refused_component_writes_nothing(tune, fake_recipes, tmp_path):
    out_dir = tmp_path / "never"
    code, _, err = tune("run", "train_single_device", "--config", "tiny/1B_lora", "model._component_=os.system",
                        f"output_dir={out_dir}")
    assert code == 2 and "not in an allowed module" in err and not out_dir.exists()


def _env(tmp_path):
    env = dict(os.environ, PYTHONPATH=f"{REPO / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               TUNELIB_ALLOW_MODULES="support")
    return env


def test_malformed_yaml_through_the_real_command(tmp_path, fake_recipes):
    bad = tmp_path / "bad.yaml"
    bad.write_text("output_dir: /o\nmodel:\n  x: [1, 2\n")
    proc = subprocess.run([sys.executable, "-m", "tunelib.cli.main", "validate", str(bad)],
                          capture_output=True, text=True, env=_env(tmp_path))
    assert proc.returncode == 2 and "malformed YAML" in proc.stderr and "line" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_torchrun_handoff_starts_every_rank(tmp_path, fake_recipes):
    recipe = tmp_path / "train.py"
    recipe.write_text((fake_recipes / "train.py").read_text())
    config = tmp_path / "c.yaml"
    config.write_text((fake_recipes / "configs/tiny/1B_lora.yaml").read_text())
    out = tmp_path / "dist"
    cmd = [sys.executable, "-m", "tunelib.cli.main", "run", "--nproc_per_node", "2", str(recipe),
           "--config", str(config), "--model.lora_rank=32", f"output_dir={out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world"] == 2 for r in ranks)
    assert all(r["model"]["lora_rank"] == 32 for r in ranks)


def test_torchrun_handoff_checks_the_config_before_starting(tmp_path, fake_recipes):
    recipe = tmp_path / "train.py"
    recipe.write_text((fake_recipes / "train.py").read_text())
    config = tmp_path / "c.yaml"
    config.write_text((fake_recipes / "configs/tiny/1B_lora.yaml").read_text())
    cmd = [sys.executable, "-m", "tunelib.cli.main", "run", "--nproc_per_node", "2", str(recipe),
           "--config", str(config), "--model.lora_rnak=32"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(tmp_path), timeout=120)
    assert proc.returncode == 2 and "did you mean 'model.lora_rank'" in proc.stderr
    assert "Running" not in proc.stdout
