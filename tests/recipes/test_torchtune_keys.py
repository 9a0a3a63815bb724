"""A config in torchtune's form runs, and its keys do what torchtune's docs say (issue 16, points 1-2).

The file below is written the way torchtune's configs are (its `_component_` names, the model
folder only in `checkpointer`, checkpoint_files, model_type, profiler, DiskLogger); only the
model builder is tunelib's from_hf_config, since the tests' tiny models have no named size.
"""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from support.recipes import data_file, tiny_model_folder
from tunelib.checkpoint.torchtune_keys import listed_files
from tunelib.training import DiskLogger

RECIPE = "lora_finetune_single_device"

TORCHTUNE_FORM = """\
output_dir: {out}
model:
  _component_: tunelib.models.from_hf_config
  lora_attn_modules: ['q_proj', 'v_proj', 'output_proj']
  lora_rank: 4
  lora_alpha: 8
tokenizer:
  _component_: torchtune.models.llama3.llama3_tokenizer
  path: {folder}/original/tokenizer.model
  max_seq_len: 128
checkpointer:
  _component_: torchtune.training.FullModelHFCheckpointer
  checkpoint_dir: {folder}/
  checkpoint_files: [model.safetensors]
  recipe_checkpoint: null
  output_dir: ${{output_dir}}
  model_type: LLAMA3_2
resume_from_checkpoint: False
dataset:
  _component_: torchtune.datasets.alpaca_cleaned_dataset
  source: json
  data_files: {data}
seed: 0
batch_size: 2
optimizer:
  _component_: torch.optim.AdamW
  lr: 3e-3
lr_scheduler:
  _component_: torchtune.training.lr_schedulers.get_cosine_schedule_with_warmup
  num_warmup_steps: 0
loss:
  _component_: torchtune.modules.loss.CEWithChunkedOutputLoss
epochs: 1
max_steps_per_epoch: 3
gradient_accumulation_steps: 1
metric_logger:
  _component_: torchtune.training.metric_logging.DiskLogger
  log_dir: ${{output_dir}}/logs
device: cpu
dtype: fp32
profiler:
  _component_: torchtune.training.setup_torch_profiler
  enabled: False
  output_dir: ${{output_dir}}/profiling_outputs
  cpu: True
  cuda: True
  wait_steps: 0
  warmup_steps: 1
  active_steps: 1
  num_cycles: 1
low_cpu_ram: False
log_level: INFO
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("models"), "llama3_2")


@pytest.fixture
def config(folder, tmp_path):
    """write(**replacements) -> path of the torchtune-form file, with `key: value` lines replaced."""
    def write(extra: str = "", **lines: str) -> str:
        text = TORCHTUNE_FORM.format(out=tmp_path / "out", folder=folder, data=data_file(tmp_path))
        for old, new in lines.items():
            old = old.replace("__", ".")
            assert old in text, old
            text = text.replace(old, new)
        path = tmp_path / "torchtune_form.yaml"
        path.write_text(text + extra)
        return str(path)

    return write


def test_a_torchtune_file_trains_with_a_profile_and_a_disk_log(tune, config, tmp_path):
    path = config(**{"enabled: False": "enabled: True", "log_level: INFO": "log_level: ERROR"})
    code, out, err = tune("run", RECIPE, "--config", path)
    assert code == 0, err
    run = tmp_path / "out"
    trace = json.loads((run / "profiling_outputs/iteration_2/rank0_trace.json").read_text())
    assert trace["traceEvents"]  # step 2 recorded (wait 0, warmup 1, active 1)
    assert f"Profiler traces: {run / 'profiling_outputs/iteration_2/rank0_trace.json'}" in out
    log = next((run / "logs").glob("log_*.txt")).read_text().splitlines()
    assert [line.split(" |")[0] for line in log] == ["Step 1", "Step 2", "Step 3"] and "loss:" in log[0]
    assert (run / "final/adapter/adapter_model.safetensors").is_file()
    assert "rows kept" not in out  # the dataset's report (a warning here: rows were truncated), hidden by log_level ERROR


def test_a_profile_that_recorded_nothing_says_so(tune, config, tmp_path):
    code, out, err = tune("run", RECIPE, "--config", config(**{"enabled: False": "enabled: True",
                                                                "wait_steps: 0": "wait_steps: 5"}))
    assert code == 0, err
    assert "Profiler: nothing recorded; the run ended before step 7" in out
    assert not (tmp_path / "out/profiling_outputs").exists()


def test_the_same_file_validates(tune, config):
    code, out, err = tune("validate", config(), "--recipe", RECIPE)
    assert code == 0, err
    assert "well-formed" in out


@pytest.mark.parametrize("lines, says", [
    ({"checkpoint_files: [model.safetensors]": "checkpoint_files: [model-00001-of-00002.safetensors]"},
     "checkpointer.checkpoint_files names model-00001-of-00002.safetensors, not in"),
    ({"checkpoint_files: [model.safetensors]":
      "checkpoint_files:\n    filename_format: model-{}-of-{}.safetensors\n    max_filename: '00002'"},
     "checkpoint_files names model-00001-of-00002.safetensors, model-00002-of-00002.safetensors, not in"),
    ({"model_type: LLAMA3_2": "model_type: QWEN2"},
     "checkpointer.model_type=QWEN2 but"),
    ({"model_type: LLAMA3_2": "model_type: LLAMA3_VISION"},
     "checkpointer.model_type=LLAMA3_VISION is not supported"),
    ({"low_cpu_ram: False": "low_cpu_ram: False\ncheckpoint_dir: /somewhere/else"},
     "checkpoint_dir=/somewhere/else but checkpointer.checkpoint_dir="),
    ({"low_cpu_ram: False": "custom_sharded_layers: ['tok_embeddings', 'layers.0']"},
     "custom_sharded_layers names layers.0"),
    ({"enabled: False": "enabled: True", "  cpu: True": "  cpu: False", "  cuda: True": "  cuda: False"},
     "profiler: none of the asked activities (cpu, cuda, xpu) exists on this machine"),
    ({"log_level: INFO": "log_level: LOUD"}, "log_level"),
    ({"_component_: torchtune.modules.loss.CEWithChunkedOutputLoss":
      "_component_: torchtune.rlhf.loss.PPOLoss"},
     "torchtune.rlhf.loss.PPOLoss is not supported: PPO"),
])
def test_what_torchtune_keys_say_is_checked_in_one_line(tune, config, lines, says):
    code, out, err = tune("validate", config(**lines), "--recipe", RECIPE)
    assert code == 2, out
    assert err.startswith("tune: error: ") and says in err and err.count("\n") == 1


def test_accepted_keys_that_hold_already_validate(tune, config):
    path = config(**{"low_cpu_ram: False": "low_cpu_ram: True\ncustom_sharded_layers: ['tok_embeddings', 'output']",
                     "checkpoint_files: [model.safetensors]":
                     "checkpoint_files: {filename_format: 'model.safetensors', max_filename: '1'}"})
    code, out, err = tune("validate", path, "--recipe", RECIPE)
    assert code == 0, err


def test_recipe_checkpoint_without_resume_is_refused(tune, config, tmp_path):
    (tmp_path / "out/step_2").mkdir(parents=True)
    (tmp_path / "out/step_2/tunelib_complete.json").write_text('{"step": 2}')
    path = config(**{"recipe_checkpoint: null": "recipe_checkpoint: step_2"})
    for words in (("run", RECIPE, "--config", path), ("validate", path, "--recipe", RECIPE)):
        code, out, err = tune(*words)
        assert code == 2
        assert "recipe_checkpoint/adapter_checkpoint name" in err and "set resume_from_checkpoint=True" in err


def test_a_torchtune_recipe_state_cannot_be_resumed(tune, config, tmp_path):
    (tmp_path / "out/epoch_0").mkdir(parents=True)
    (tmp_path / "out/epoch_0/recipe_state.pt").write_bytes(b"")
    path = config(**{"recipe_checkpoint: null": "recipe_checkpoint: epoch_0/recipe_state.pt",
                     "resume_from_checkpoint: False": "resume_from_checkpoint: True"})
    code, out, err = tune("run", RECIPE, "--config", path)
    assert code == 2
    assert "torchtune's own recipe_state.pt cannot be resumed" in err


def test_resuming_into_a_torchtune_output_dir_is_refused_not_started_over(tune, config, tmp_path):
    # torchtune v0.6.1's layout: epoch_N model folders and output_dir/recipe_state/recipe_state.pt.
    (tmp_path / "out/epoch_0").mkdir(parents=True)
    (tmp_path / "out/epoch_0/model.safetensors").write_bytes(b"")
    (tmp_path / "out/recipe_state").mkdir()
    (tmp_path / "out/recipe_state/recipe_state.pt").write_bytes(b"")
    path = config(**{"resume_from_checkpoint: False": "resume_from_checkpoint: True"})
    code, out, err = tune("run", RECIPE, "--config", path)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "holds a torchtune run (epoch_0, recipe_state), which tunelib cannot resume" in err
    assert "checkpoint_dir set to its newest epoch_N folder" in err
    assert not (tmp_path / "out/final").exists() and "step 1" not in out


def test_recipe_checkpoint_names_the_checkpoint_a_resume_starts_from(tune, config, tmp_path):
    first = config(extra="save_every_n_steps: 1\n")
    assert tune("run", RECIPE, "--config", first)[0] == 0
    path = config(extra="save_every_n_steps: 1\n", **{
        "recipe_checkpoint: null": "recipe_checkpoint: step_1/training_state.pt",
        "resume_from_checkpoint: False": "resume_from_checkpoint: True"})
    code, out, err = tune("run", RECIPE, "--config", path)
    assert code == 0, err
    assert f"Resuming from {tmp_path / 'out' / 'step_1'}: step 1 of 3" in out  # not the newest, final


def test_checkpoint_files_mapping_names_torchtune_s_shards():
    assert listed_files({"filename_format": "model-{}-of-{}.safetensors", "max_filename": "00003"}) == [
        "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"]


def test_disk_logger_writes_jsonl_when_asked(tmp_path):
    logger = DiskLogger(str(tmp_path), filename="m.jsonl", output_fmt="jsonl")
    logger.log(1, {"loss": 2.5})
    logger.close()
    assert json.loads((tmp_path / "m.jsonl").read_text()) == {"step": 1, "loss": 2.5}


@pytest.mark.parametrize("name, nf4", [("qlora_code_llama2_7b", True), ("lora_code_llama2_7b", False)])
def test_a_qlora_name_trains_on_an_nf4_base(tune, tmp_path, name, nf4):
    # With lr 0 the adapter stays zero, so the merged model is the base as training saw it:
    # NF4's round trip (errors of ~0.05) for qlora_*, the bf16 weights (~0.002) for lora_*.
    # (code_llama2 builds from the folder's config.json, so a tiny model can stand in.)
    folder = tiny_model_folder(tmp_path / "m", "llama3_2", hidden_size=128, intermediate_size=256,
                               num_attention_heads=4, num_key_value_heads=4)
    text = TORCHTUNE_FORM.format(out=tmp_path / "out", folder=folder, data=data_file(tmp_path))
    text = text.replace("tunelib.models.from_hf_config", f"torchtune.models.code_llama2.{name}")
    (tmp_path / "c.yaml").write_text(text.replace("dtype: fp32", "dtype: bf16").replace("max_seq_len: 128", "max_seq_len: 256"))
    code, out, err = tune("run", RECIPE, "--config", str(tmp_path / "c.yaml"), "optimizer.lr=0", "max_steps_per_epoch=1")
    assert code == 0, err
    key = "model.layers.0.self_attn.k_proj.weight"
    before = load_file(str(folder / "model.safetensors"))[key].float()
    after = load_file(next((tmp_path / "out/final/merged").glob("*.safetensors")))[key].float()
    assert (float((after - before).abs().max()) > 0.01) == nf4
