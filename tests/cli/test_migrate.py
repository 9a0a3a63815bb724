"""`tune migrate FILE [-o OUT]` rewrites a torchtune config in tunelib's form (issue 16, point 4)."""

from __future__ import annotations

import yaml

from support.recipes import data_file, tiny_model_folder

# A config in torchtune's form (names and layout as torchtune writes them), with comments.
TORCHTUNE_FORM = """\
# LoRA on a small model.
output_dir: {out} # where results go

model:
  _component_: torchtune.models.llama3_2.qlora_llama3_2_1b
  lora_attn_modules: ['q_proj', 'v_proj', 'output_proj']
  lora_rank: 4  # higher is more accurate

tokenizer:
  _component_: torchtune.models.phi4.phi4_tokenizer
  vocab_path: {folder}/vocab.json
  merges_path: {folder}/merges.txt

checkpointer:
  _component_: torchtune.training.FullModelHFCheckpointer
  checkpoint_dir: {folder}
  checkpoint_files:
    filename_format: model-{{}}-of-{{}}.safetensors
    max_filename: "00002"
  recipe_checkpoint: null
  output_dir: ${{output_dir}}
  model_type: LLAMA3_2
dataset:
  _component_: torchtune.datasets.alpaca_cleaned_dataset
optimizer:
  _component_: bitsandbytes.optim.PagedAdamW8bit
  lr: 3e-4
low_cpu_ram: False
"""


def write(tmp_path, text=None):
    path = tmp_path / "torchtune.yaml"
    path.write_text(text or TORCHTUNE_FORM.format(out="/tmp/out", folder="/models/m"))
    return path


def test_migrate_rewrites_names_and_keys_and_prints_each_change(tune, tmp_path):
    out = tmp_path / "native.yaml"
    code, stdout, err = tune("migrate", str(write(tmp_path)), "-o", str(out))
    assert code == 0, err
    cfg = yaml.safe_load(out.read_text())
    assert cfg["model"] == {"_component_": "tunelib.models.llama3_2.llama3_2_1b", "quantize_base": True,
                            "lora_attn_modules": ["q_proj", "v_proj", "o_proj"], "lora_rank": 4}
    assert cfg["tokenizer"] == {"_component_": "tunelib.tokenizers.phi4_tokenizer",
                                "path": "/models/m/vocab.json", "merges_file": "/models/m/merges.txt"}
    assert cfg["checkpoint_dir"] == "/models/m"
    assert cfg["checkpointer"] == {"_component_": "tunelib.training.HFCheckpointer",
                                   "checkpoint_dir": "${checkpoint_dir}", "output_dir": "${output_dir}"}
    assert cfg["dataset"]["_component_"] == "tunelib.data.alpaca_cleaned_dataset"
    assert cfg["optimizer"]["_component_"] == "bitsandbytes.optim.PagedAdamW8bit"  # kept: `tune run` needs the package
    assert "low_cpu_ram" not in cfg
    text = out.read_text()
    assert "# higher is more accurate" in text and "# where results go" in text  # comments stay
    assert "model._component_: torchtune.models.llama3_2.qlora_llama3_2_1b -> tunelib.models.llama3_2.llama3_2_1b" in stdout
    assert "model.quantize_base: true added" in stdout
    assert "checkpointer.model_type: removed" in stdout
    assert stdout.count("\n") == 15  # the heading and fourteen changes


def test_without_output_the_yaml_goes_to_stdout_and_the_changes_to_stderr(tune, tmp_path):
    code, stdout, err = tune("migrate", str(write(tmp_path)))
    assert code == 0
    assert yaml.safe_load(stdout)["checkpoint_dir"] == "/models/m"
    assert "checkpointer._component_: torchtune.training.FullModelHFCheckpointer -> tunelib.training.HFCheckpointer" in err


def test_a_migrated_file_validates_as_tunelib_s_own(tune, tmp_path):
    folder = tiny_model_folder(tmp_path, "llama3_2")
    text = TORCHTUNE_FORM.format(out=tmp_path / "out", folder=folder)
    text = (text.replace("torchtune.models.llama3_2.qlora_llama3_2_1b", "torchtune.models.code_llama2.lora_code_llama2_7b")
            .replace("torchtune.models.phi4.phi4_tokenizer", "torchtune.models.llama3.llama3_tokenizer")
            .replace("vocab_path: ", "path: ").replace("vocab.json", "original/tokenizer.model")
            .replace(f"  merges_path: {folder}/merges.txt\n", "")
            .replace("bitsandbytes.optim.PagedAdamW8bit", "torch.optim.AdamW")
            .replace("alpaca_cleaned_dataset\n", f"alpaca_cleaned_dataset\n  source: json\n  data_files: {data_file(tmp_path)}\n")
            + "device: cpu\ndtype: fp32\n")
    out = tmp_path / "native.yaml"
    code, stdout, err = tune("migrate", str(write(tmp_path, text)), "-o", str(out))
    assert code == 0, err
    assert "torchtune" not in out.read_text().replace("migrat", "")
    code, stdout, err = tune("validate", str(out), "--recipe", "lora_finetune_single_device")
    assert code == 0, err


def test_a_component_with_no_equivalent_is_one_line(tune, tmp_path):
    text = TORCHTUNE_FORM.format(out="/o", folder="/m").replace(
        "torchtune.training.FullModelHFCheckpointer", "torchtune.training.FullModelMetaCheckpointer")
    code, stdout, err = tune("migrate", str(write(tmp_path, text)), "-o", str(tmp_path / "x.yaml"))
    assert code == 2 and not (tmp_path / "x.yaml").exists()
    assert err.startswith("tune: error: checkpointer._component_: torchtune.training.FullModelMetaCheckpointer "
                          "is not supported") and err.count("\n") == 1


def test_an_existing_output_is_never_overwritten(tune, tmp_path):
    out = tmp_path / "native.yaml"
    out.write_text("mine: 1\n")
    code, stdout, err = tune("migrate", str(write(tmp_path)), "-o", str(out))
    assert code == 2 and "exists already" in err and out.read_text() == "mine: 1\n"


def test_a_missing_file_is_one_line(tune, tmp_path):
    code, stdout, err = tune("migrate", str(tmp_path / "nope.yaml"))
    assert code == 2 and err == f"tune: error: {tmp_path / 'nope.yaml'} does not exist; give the path of a torchtune YAML config\n"
