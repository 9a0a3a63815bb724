"""torchtune's generation.yaml form (model, checkpointer and tokenizer nodes, its extra keys)
runs `tune run generate` with only paths changed, and what it asks is checked."""

from __future__ import annotations

import pytest

from support.recipes import tiny_model_folder

FORM = """
output_dir: ./ # Not needed
model:
  _component_: torchtune.models.llama3_2.llama3_2_1b
checkpointer:
  _component_: torchtune.training.FullModelHFCheckpointer
  checkpoint_dir: {folder}
  checkpoint_files: [model.safetensors]
  output_dir: ${{output_dir}}
  model_type: LLAMA3_2
device: cpu
dtype: fp32
seed: 1234
tokenizer:
  _component_: torchtune.models.llama3.llama3_tokenizer
  path: {folder}/original/tokenizer.model
  max_seq_len: null
  prompt_template: null
prompt:
  system: null
  user: "Tell me a joke."
max_new_tokens: 8
temperature: 0
top_k: 300
enable_kv_cache: True
quantizer: null
log_level: INFO
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("models"), "llama3_2")


def write(tmp_path, folder, **lines) -> str:
    text = FORM.format(folder=folder)
    for old, new in lines.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "generation.yaml"
    path.write_text(text)
    return str(path)


def test_torchtunes_generation_file_answers_as_tunelibs_own_keys(tune, folder, tmp_path):
    # The tiny folder is not Llama 3.2 1B: the model node names the builder that reads its config.json.
    path = write(tmp_path, folder, **{"torchtune.models.llama3_2.llama3_2_1b": "tunelib.models.from_hf_config"})
    code, out, err = tune("run", "generate", "--config", path)
    assert code == 0, err
    plain = tune("run", "generate", "--config", "generation", f"checkpoint_dir={folder}", "device=cpu", "dtype=fp32",
                 "temperature=0", "max_new_tokens=8", "top_k=300", "prompt=Tell me a joke.", "seed=1234")
    assert plain[0] == 0, plain[2]
    assert out == plain[1] and out.strip()


@pytest.mark.parametrize(("lines", "says"), [
    ({}, "describes a different model than llama3_2_1b"),  # the named builder checks the folder
    ({"model_type: LLAMA3_2": "model_type: QWEN2"}, "model_type"),
    ({"checkpoint_files: [model.safetensors]": "checkpoint_files: [model-00001-of-00002.safetensors]"},
     "checkpoint_files"),
    ({"enable_kv_cache: True": "enable_kv_cache: False"}, "enable_kv_cache=False"),
    ({"seed: 1234": "seed: 1234\ncheckpoint_dir: /tmp/elsewhere"}, "they must name the same folder"),
    ({"quantizer: null": "quantizer:\n  _component_: torchtune.training.quantization.Int8DynActInt4WeightQuantizer"},
     "quantizer"),
])
def test_what_torchtunes_keys_say_is_checked_in_one_line(tune, folder, tmp_path, lines, says):
    code, out, err = tune("run", "generate", "--config", write(tmp_path, folder, **lines))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert says in err


def test_the_same_file_validates(tune, folder, tmp_path):
    path = write(tmp_path, folder, **{"torchtune.models.llama3_2.llama3_2_1b": "tunelib.models.from_hf_config"})
    code, out, err = tune("validate", path, "--recipe", "generate")
    assert code == 0, err
