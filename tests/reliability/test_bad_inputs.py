"""The catalogue of bad inputs (issue 7): each is given the way a user gives it, on the command
line of `tune run`, `tune validate` or `tune cat`, and each gets

  - the right exit code: 2 for bad input, 1 for a run that had to stop (a failed save),
  - exactly one line on stderr, `tune: error: ...`, that says what is wrong,
  - no traceback, on stdout or stderr,
  - nothing earlier in output_dir (or a checkpoint in it, or the model folder) changed.

docs/troubleshooting.md lists every message here with its cause and fix. Most cases run
`tune` in this process (the same `main` the console script calls, and much faster); a few
run it in a process of its own, as the console script does.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from support.data import write_rows
from support.recipes import ROWS, tiny_model_folder, words

LORA = ("lora_finetune_single_device", "llama3_2/1B_lora_tunelib")
FULL = ("full_finetune_single_device", "llama3_2/1B_full_tunelib")
SENTINEL = "user_notes.txt"
# The finished run's settings; a resume that changed one would print a warning line as well.
RUN = ("save_every_n_steps=2", "max_steps_per_epoch=6")
REPO = Path(__file__).resolve().parents[2]


# -- shared inputs, built once for the module ------------------------------------------------


@dataclass
class Inputs:
    """Model folders (good and broken), data files and a finished run, shared by the cases."""

    root: Path
    folder: Path  # a tiny Llama 3.2 with its tokenizer
    data: Path  # the training rows every case uses, so a resume sees the same dataset
    broken: dict[str, Path] = field(default_factory=dict)  # name -> a broken copy of `folder`
    run: Path | None = None  # output_dir of a finished LoRA run (see finished_run)


def _broken_copy(inputs: Inputs, name: str, damage: Callable[[Path], None]) -> None:
    copy = inputs.root / "broken" / name
    shutil.copytree(inputs.folder, copy)
    damage(copy)
    inputs.broken[name] = copy


def _other_architecture(folder: Path, root: Path) -> Callable[[Path], None]:
    # Qwen2 weights (q/k/v biases, another vocabulary) under the Llama folder's config.json.
    qwen = tiny_model_folder(root / "qwen", "qwen2")
    return lambda copy: shutil.copy(qwen / "model.safetensors", copy / "model.safetensors")


def _mis_shaped(copy: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(copy / "model.safetensors")
    weights["model.norm.weight"] = weights["model.norm.weight"][:32].clone()
    save_file(weights, copy / "model.safetensors", metadata={"format": "pt"})


def _unsupported_architecture(copy: Path) -> None:
    config = json.loads((copy / "config.json").read_text())
    config.update(architectures=["MambaForCausalLM"], model_type="mamba")
    (copy / "config.json").write_text(json.dumps(config))


def _truncated_weights(copy: Path) -> None:
    data = (copy / "model.safetensors").read_bytes()
    (copy / "model.safetensors").write_bytes(data[: len(data) // 2])  # an interrupted download


def _corrupt_tokenizer_json(copy: Path) -> None:
    (copy / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": ')


def _edit_config(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    """Damage a copy's config.json: `edit(config)` returns what the file holds instead."""

    def damage(copy: Path) -> None:
        config = json.loads((copy / "config.json").read_text())
        (copy / "config.json").write_text(json.dumps(edit(config)))

    return damage


def _int32_weights(copy: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    weights = {k: (v * 100).to(torch.int32) for k, v in load_file(copy / "model.safetensors").items()}
    save_file(weights, copy / "model.safetensors", metadata={"format": "pt"})


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Inputs:
    root = tmp_path_factory.mktemp("bad_inputs")
    inputs = Inputs(root, tiny_model_folder(root / "model", "llama3_2"), write_rows(root / "train.jsonl", ROWS))
    _broken_copy(inputs, "no_weights", lambda copy: (copy / "model.safetensors").unlink())
    _broken_copy(inputs, "other_architecture", _other_architecture(inputs.folder, root))
    _broken_copy(inputs, "mis_shaped", _mis_shaped)
    _broken_copy(inputs, "unsupported_architecture", _unsupported_architecture)
    _broken_copy(inputs, "truncated_weights", _truncated_weights)
    _broken_copy(inputs, "corrupt_tokenizer_json", _corrupt_tokenizer_json)
    _broken_copy(inputs, "string_hidden_size", _edit_config(lambda config: {**config, "hidden_size": "64"}))
    _broken_copy(inputs, "config_json_list", _edit_config(lambda config: [config]))
    _broken_copy(inputs, "int32_weights", _int32_weights)
    # The Llama 3 tokenizer has 768 ids; this model's embedding table only 300.
    inputs.broken["small_vocab"] = tiny_model_folder(root / "small_vocab", "llama3_2", vocab_size=300)
    return inputs


@pytest.fixture(scope="module")
def finished_run(inputs) -> Path:
    """A LoRA run of 6 steps that saved step_2, step_4 and final (cases copy it before use)."""
    from tunelib.cli.main import main

    out = inputs.root / "finished_run"
    code = main(["run", *_recipe(LORA), *words(inputs.folder, out, inputs.data, RUN)])
    assert code == 0 and (out / "step_2/tunelib_complete.json").is_file() and (out / "final").is_dir()
    return out


@pytest.fixture(scope="module", autouse=True)
def quiet_progress_bars():
    """Progress bars are not messages: the data-loading bars of `datasets` would add lines to
    stderr above the error line. Off for this module, as HF_DATASETS_DISABLE_PROGRESS_BARS=1 does."""
    import datasets

    was_enabled = datasets.utils.logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    yield
    if was_enabled:
        datasets.enable_progress_bars()


# -- one case ------------------------------------------------------------------------------


@dataclass
class Env:
    """What a case's words are made from: the shared inputs and this test's own folders."""

    inputs: Inputs
    tmp: Path
    out: Path  # output_dir; holds SENTINEL before the run

    @property
    def folder(self) -> Path:
        return self.inputs.folder

    def broken(self, name: str) -> Path:
        return self.inputs.broken[name]

    def train(self, recipe: tuple[str, str], *overrides: str) -> list[str]:
        """`tune run RECIPE --config CONFIG` on the tiny model, 4 fp32 steps on CPU (later overrides win)."""
        return ["run", *_recipe(recipe), *words(self.folder, self.out, self.inputs.data, overrides)]


def _recipe(recipe: tuple[str, str]) -> list[str]:
    return [recipe[0], "--config", recipe[1]]


@dataclass
class Case:
    id: str
    argv: Callable[[Env], list[str]]  # the words after `tune`
    message: str | tuple[str, ...]  # fragment(s) of the error line
    code: int = 2
    prepare: Callable[[Env], None] | None = None  # set up output_dir or other files first
    guard: Callable[[Env], list[Path]] | None = None  # more paths that must not change
    trains: bool = False  # the run trains before it stops (it may then log into output_dir)
    needs_run: bool = False  # prepare copies the finished run
    subprocess: bool = False  # run `tune` in its own process instead of calling main() here
    patch: Callable[[pytest.MonkeyPatch, Env], None] | None = None  # break something in-process
    after: Callable[[Env, Callable], None] | None = None  # what must still work afterwards


def _copy_run(*, drop: tuple[str, ...] = ()) -> Callable[[Env], None]:
    """Prepare output_dir as a copy of the finished run, less the folders in `drop`."""

    def prepare(env: Env) -> None:
        shutil.copytree(env.inputs.run, env.out)
        for folder in drop:
            shutil.rmtree(env.out / folder)

    return prepare


def _final_without_state(env: Env) -> None:
    _copy_run()(env)
    (env.out / "final/training_state.pt").unlink()  # as tunelib wrote final/ before it kept one


def _unmark(env: Env) -> None:
    _copy_run()(env)
    (env.out / "step_2/tunelib_complete.json").unlink()  # as if the save had been cut short


def _damage(path: str, damage: Callable[[Path], None], *, drop: tuple[str, ...] = ("step_4", "final")):
    """Prepare output_dir as the finished run less `drop`, then damage the file at `path` in it."""

    def prepare(env: Env) -> None:
        _copy_run(drop=drop)(env)
        damage(env.out / path)

    return prepare


def _cut_in_half(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])  # an interrupted copy


def _garbage(file: Path) -> None:
    file.write_bytes(bytes(range(256)) * 8)


def _rank_null(file: Path) -> None:
    file.write_text(json.dumps({**json.loads(file.read_text()), "r": None}))


def _damaged_adapter(env: Env, damage: Callable[[Path], None], name: str) -> Path:
    """A copy of the finished run's final adapter with `name` in it damaged."""
    adapter = env.tmp / "adapter"
    shutil.copytree(env.inputs.run / "final" / "adapter", adapter)
    damage(adapter / name)
    return adapter


def _generate(env: Env, adapter: Path) -> list[str]:
    return ["run", "generate", "--config", "generation", f"checkpoint_dir={env.folder}", f"adapter_dir={adapter}",
            "prompt=Hi", "max_new_tokens=2", "device=cpu"]


def _data_file(name: str, lines: list[str | bytes]) -> Callable[[Env], None]:
    """Prepare a data file of `lines` (text, or bytes that need not be UTF-8) in the test's folder."""

    def prepare(env: Env) -> None:
        data = b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines)
        (env.tmp / name).write_bytes(data)

    return prepare


ROW_LINES = [json.dumps(row) for row in ROWS[:6]]


def _chat_rows() -> list[str]:
    rows = [{"messages": [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]}
            for r in ROWS[:6]]
    rows[2]["messages"][1]["content"] = 10  # a number where the answer's text belongs, on line 3
    # Line 1's answer is the text "7", which datasets reads as a number once the column mixes
    # types: the line to name is still 3.
    return [json.dumps(row) for row in rows]


def _write_config(env: Env, extra: str) -> Path:
    """The shipped LoRA config as a user's own file, with `extra` appended."""
    path = env.tmp / "my_config.yaml"
    path.write_text((REPO / "recipes/configs/llama3_2/1B_lora_tunelib.yaml").read_text() + extra)
    return path


def _full_disk(monkeypatch: pytest.MonkeyPatch, env: Env) -> None:
    """The first step_N save writes part of its weights, then the disk is full."""
    from tunelib.training import checkpointer

    write = checkpointer.HFCheckpointer._write_model

    def write_until_full(self, model, folder, adapter_only, dist=None):
        if folder.name.startswith(".step_"):
            (folder / "adapter").mkdir()
            (folder / "adapter/adapter_model.safetensors").write_bytes(b"\0" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write(self, model, folder, adapter_only, dist)

    monkeypatch.setattr(checkpointer.HFCheckpointer, "_write_model", write_until_full)


def _resumes_from_step_2(env: Env, tune: Callable) -> None:
    """With space again, the same command resumes from the checkpoint the failed save left intact."""
    code, out, err = tune(*env.train(LORA, *RUN, "resume_from_checkpoint=True"))
    assert code == 0, err
    assert f"Resuming from {env.out / 'step_2'}: step 2 of 6" in out
    assert (env.out / "step_4/tunelib_complete.json").is_file() and not (env.out / ".step_4.tmp").exists()


CASES = [
    # -- config and overrides ---------------------------------------------------------------
    Case("unknown_top_level_key",
         lambda e: ["run", LORA[0], "--config", str(_write_config(e, "learning_rate: 1e-4\n")),
                    *words(e.folder, e.out, e.inputs.data, ())],
         "unknown key 'learning_rate'"),
    Case("typo_in_override", lambda e: e.train(LORA, "optimizer.lrr=1e-4"),
         "unknown key 'optimizer.lrr' (did you mean 'optimizer.lr'?)"),
    Case("typo_in_override_of_validate", lambda e: ["validate", LORA[1], "batch_sizee=4"],
         "unknown key 'batch_sizee' (did you mean 'batch_size'?)"),
    Case("typo_in_override_of_cat", lambda e: ["cat", LORA[1], "model.lora_rnak=4"],
         "did you mean 'model.lora_rank'?"),
    Case("override_without_value", lambda e: e.train(LORA, "batch_size"), "'batch_size' is not an override"),
    Case("wrong_value_type", lambda e: e.train(LORA, "batch_size=two"), "batch_size: expected int, got 'two'"),
    Case("negative_learning_rate", lambda e: e.train(LORA, "optimizer.lr=-1e-4"),
         ("optimizer (torch.optim.AdamW) refused its settings", "Invalid learning rate: -0.0001")),
    Case("max_seq_len_0", lambda e: e.train(LORA, "tokenizer.max_seq_len=0"), "tokenizer.max_seq_len=0"),
    Case("batch_size_0", lambda e: e.train(LORA, "batch_size=0"), "batch_size=0; it must be 1 or more"),
    # `tune validate` runs the same value rules as `tune run`.
    Case("gradient_accumulation_steps_0", lambda e: ["validate", LORA[1], "gradient_accumulation_steps=0"],
         "gradient_accumulation_steps=0; it must be 1 or more"),
    Case("unknown_recipe", lambda e: ["run", "lora_finetune_single_devise", "--config", LORA[1]],
         "unknown recipe 'lora_finetune_single_devise' (did you mean lora_finetune_single_device", subprocess=True),
    Case("unknown_config", lambda e: e.train((LORA[0], "llama3_2/1B_lorra")),
         "unknown config 'llama3_2/1B_lorra' (did you mean llama3_2/1B_lora"),
    Case("malformed_yaml",
         lambda e: ["run", LORA[0], "--config", str(_write_config(e, "model: [q_proj\n  lora_rank: 8\n"))],
         "malformed YAML", subprocess=True),
    Case("missing_config_file", lambda e: e.train((LORA[0], str(e.tmp / "my_config.yaml"))),
         "config file not found: "),
    Case("component_outside_allow_list", lambda e: e.train(LORA, "loss._component_=os.system"),
         "loss._component_: 'os.system' is not in an allowed module"),
    Case("dtype_fp16", lambda e: e.train(LORA, "dtype=fp16"), "dtype: expected one of 'fp32', 'bf16', got 'fp16'"),
    Case("lora_recipe_with_a_config_without_adapters",
         lambda e: e.train(LORA, "model.lora_attn_modules=[]", "model.apply_lora_to_mlp=False"),
         "this recipe trains adapters but the model config adds none"),
    Case("full_recipe_with_lora_keys", lambda e: e.train((FULL[0], LORA[1])),
         "the model config asks for adapters (lora_* or adapter keys) but this recipe trains every weight"),
    Case("unknown_lora_module", lambda e: e.train(LORA, "model.lora_attn_modules=[q_proj,x_proj]"),
         "lora_attn_modules: unknown module 'x_proj' (did you mean 'v_proj'?)"),
    Case("nf4_on_weights_too_small", lambda e: e.train(LORA, "model.quantize_base=True"),
         ("quantize_base:", "torchao's NF4 needs a 2-D weight whose size is a multiple of")),
    # Values the schema range-checks, so `tune validate` refuses them as `tune run` does.
    Case("device_foo", lambda e: e.train(LORA, "device=foo"), "device='foo'; use auto, cpu, cuda or cuda:N"),
    Case("negative_seed", lambda e: e.train(LORA, "seed=-1"),
         "seed=-1; use a whole number from 0 to 4294967295, or null for a random one"),
    Case("seed_beyond_2_32_in_validate", lambda e: ["validate", LORA[1], f"seed={2**70}"],
         f"seed={2**70}; use a whole number from 0 to 4294967295"),
    Case("negative_warmup_in_validate", lambda e: ["validate", LORA[1], "lr_scheduler.num_warmup_steps=-5"],
         "lr_scheduler.num_warmup_steps=-5; use 0 or more"),
    # Run from the test's own folder, which must stay as it was: "" would be the working directory.
    Case("empty_output_dir", lambda e: e.train(LORA, "output_dir="),
         "output_dir is empty, which means the current folder; give the folder's path",
         patch=lambda mp, e: mp.chdir(e.tmp), guard=lambda e: [e.tmp]),
    Case("nested_key_under_a_value_in_validate", lambda e: ["validate", LORA[1], "optimizer.lr.foo=1"],
         ("optimizer.lr is ", "a single value, so it has no key 'foo'; set it with optimizer.lr=VALUE")),
    Case("recipe_file_with_a_syntax_error",
         lambda e: ["run", str(e.tmp / "my_recipe.py"), "--config", LORA[1],
                    *words(e.folder, e.out, e.inputs.data, ())],
         ("my_recipe.py, line 2: '(' was never closed", "fix the file"),
         prepare=lambda e: (e.tmp / "my_recipe.py").write_text('def main(cfg):\n    print("hi"\n')),
    Case("optimizer_in_bwd_with_accumulation",
         lambda e: e.train(FULL, "optimizer._component_=torch.optim.AdamW", "optimizer_in_bwd=True",
                           "gradient_accumulation_steps=2"),
         "optimizer_in_bwd steps each weight inside backward, so it cannot accumulate gradients"),
    # -- files and folders ------------------------------------------------------------------
    Case("missing_checkpoint_dir", lambda e: e.train(LORA, f"checkpoint_dir={e.tmp / 'Llama-3.2-1B'}"),
         ("checkpoint_dir", "Llama-3.2-1B does not exist", "tune download"), subprocess=True),
    Case("checkpoint_dir_without_weights", lambda e: e.train(LORA, f"checkpoint_dir={e.broken('no_weights')}"),
         "no_weights holds no weights: expected model.safetensors"),
    Case("weights_of_another_architecture",
         lambda e: e.train(LORA, f"checkpoint_dir={e.broken('other_architecture')}"),
         "weight 'model.embed_tokens.weight' has shape (528, 64) but the model expects (768, 64)"),
    Case("mis_shaped_weight", lambda e: e.train(LORA, f"checkpoint_dir={e.broken('mis_shaped')}"),
         "weight 'model.norm.weight' has shape (32,) but the model expects (64,)"),
    Case("unsupported_architecture",
         lambda e: e.train(LORA, f"checkpoint_dir={e.broken('unsupported_architecture')}"),
         "describes MambaForCausalLM, which tunelib does not support"),
    Case("truncated_safetensors", lambda e: e.train(LORA, f"checkpoint_dir={e.broken('truncated_weights')}"),
         ("cannot read", "model.safetensors", "damaged or incomplete")),
    Case("config_json_hidden_size_is_text",
         lambda e: e.train(LORA, f"checkpoint_dir={e.broken('string_hidden_size')}"),
         ("config.json (LlamaForCausalLM) cannot be used: hidden_size is '64'", "a whole number of 1 or more")),
    Case("config_json_is_a_list", lambda e: e.train(LORA, f"checkpoint_dir={e.broken('config_json_list')}"),
         "config_json_list/config.json must hold a JSON object ({...}), not a list"),
    Case("int32_weights", lambda e: e.train(LORA, f"checkpoint_dir={e.broken('int32_weights')}"),
         ("weight 'model.embed_tokens.weight' is int32, but the model needs floating-point weights",
          "use the original model's safetensors")),
    Case("output_dir_under_a_file", lambda e: e.train(LORA, f"output_dir={e.tmp / 'notes.txt' / 'out'}"),
         "notes.txt/out is not writable: Not a directory",
         prepare=lambda e: (e.tmp / "notes.txt").write_text("a file, not a folder"),
         guard=lambda e: [e.tmp / "notes.txt"]),
    Case("output_dir_inside_checkpoint_dir",
         lambda e: e.train(LORA, f"checkpoint_dir={e.tmp / 'model'}", f"output_dir={e.tmp / 'model' / 'out'}"),
         "is inside checkpoint_dir",
         prepare=lambda e: shutil.copytree(e.folder, e.tmp / "model"),
         guard=lambda e: [e.tmp / "model"]),
    Case("existing_run_without_resume", lambda e: e.train(LORA, *RUN),
         "already holds a run (step_2, step_4, final, metrics.jsonl); set resume_from_checkpoint=True",
         prepare=_copy_run(), needs_run=True),
    Case("full_disk_at_a_save",
         lambda e: e.train(LORA, *RUN, "resume_from_checkpoint=True"),
         ("cannot write checkpoint", "step_4: No space left on device", "step_2 is intact",
          "resume_from_checkpoint=True"), code=1,
         prepare=_copy_run(drop=("step_4", "final")), needs_run=True, trains=True, patch=_full_disk,
         after=_resumes_from_step_2),
    # -- data -------------------------------------------------------------------------------
    Case("empty_dataset", lambda e: e.train(LORA, f"dataset.data_files={e.tmp / 'empty.jsonl'}"),
         "empty.jsonl is empty: it has no rows", prepare=lambda e: (e.tmp / "empty.jsonl").write_text("")),
    Case("row_missing_its_output", lambda e: e.train(LORA, f"dataset.data_files={e.tmp / 'rows.jsonl'}"),
         ("line 4 of", "rows.jsonl has no value for field 'output'"),
         prepare=lambda e: write_rows(e.tmp / "rows.jsonl", [*ROWS[:3], {"instruction": "Hi", "input": ""}])),
    # In a process of its own, so that a line `datasets` logs itself would be seen too.
    Case("malformed_jsonl_line", lambda e: e.train(LORA, f"dataset.data_files={e.tmp / 'rows.jsonl'}"),
         "rows.jsonl could not be read: line 3 is not valid JSON: Expecting ',' delimiter (column 77)",
         prepare=_data_file("rows.jsonl", [*ROW_LINES[:2], ROW_LINES[2][:-1], *ROW_LINES[3:]]), subprocess=True),
    Case("data_file_not_utf8", lambda e: e.train(LORA, f"dataset.data_files={e.tmp / 'rows.jsonl'}"),
         ("rows.jsonl could not be read: line 2 is not UTF-8 text (byte 0xff", "save the file as UTF-8"),
         prepare=_data_file("rows.jsonl", [ROW_LINES[0], ROW_LINES[1].encode().replace(b"tac", b"t\xffc"),
                                            *ROW_LINES[2:]])),
    Case("number_where_text_is_expected",
         lambda e: e.train(LORA, "dataset._component_=tunelib.data.chat_dataset",
                           f"dataset.data_files={e.tmp / 'chat.jsonl'}"),
         ("line 3 of", "chat.jsonl, column 'messages', turn 1 has content of type int; expected text"),
         prepare=_data_file("chat.jsonl", _chat_rows())),
    Case("gradient_accumulation_steps_beyond_the_data",
         lambda e: e.train(LORA, "gradient_accumulation_steps=20", "max_steps_per_epoch=null"),
         ("gradient_accumulation_steps=20, but the data gives only 16 batches of 2 per epoch",
          "no optimizer step would run; set gradient_accumulation_steps=16 or less")),
    Case("data_file_missing", lambda e: e.train(LORA, f"dataset.data_files={e.tmp / 'trian.jsonl'}"),
         ("trian.jsonl", "check dataset.source and dataset.data_files")),
    Case("misspelled_dataset_key", lambda e: e.train(LORA, f"dataset.data_filse={e.inputs.data}"),
         "dataset.data_filse is not an option of the dataset builder or of datasets.load_dataset "
         "(did you mean 'dataset.data_files'?)"),
    # -- tokenizers -------------------------------------------------------------------------
    Case("token_ids_beyond_the_vocabulary",
         lambda e: e.train(LORA, f"checkpoint_dir={e.broken('small_vocab')}"),
         ("has token id 512, but the model's vocabulary has 300 ids", "the tokenizer does not match the model")),
    Case("tokenizer_path_missing", lambda e: e.train(LORA, f"tokenizer.path={e.tmp / 'tokenizer.model'}"),
         "tokenizer.model does not exist; set tokenizer.path to the model folder"),
    Case("corrupt_tokenizer_json",
         lambda e: e.train(LORA, f"checkpoint_dir={e.broken('corrupt_tokenizer_json')}",
                           f"tokenizer.path={e.broken('corrupt_tokenizer_json')}"),
         "tokenizer.json is not a readable tokenizer.json"),
    # -- checkpoints and resume -------------------------------------------------------------
    Case("resume_path_missing", lambda e: e.train(LORA, f"resume_from_checkpoint={e.out / 'step_200'}"),
         "step_200 does not exist; name a step_N folder of output_dir"),
    Case("incomplete_checkpoint_named_for_resume",
         lambda e: e.train(LORA, *RUN, f"resume_from_checkpoint={e.out / 'step_2'}"),
         "step_2 is not a complete tunelib checkpoint (no tunelib_complete.json)", prepare=_unmark, needs_run=True),
    Case("batch_size_changed_on_resume",
         lambda e: e.train(LORA, *RUN, f"resume_from_checkpoint={e.out / 'step_2'}", "batch_size=1"),
         "batch_size 2 -> 1 changed, so the saved position in the data no longer applies",
         prepare=_copy_run(), needs_run=True),
    Case("truncated_adapter_on_resume", lambda e: e.train(LORA, *RUN, "resume_from_checkpoint=True"),
         ("cannot read", "step_2/adapter/adapter_model.safetensors", "the file is damaged or incomplete"),
         prepare=_damage("step_2/adapter/adapter_model.safetensors", _cut_in_half), needs_run=True),
    Case("adapter_config_rank_null_on_resume", lambda e: e.train(LORA, *RUN, "resume_from_checkpoint=True"),
         "step_2/adapter/adapter_config.json: r is null; it must be the adapter's rank, a whole number of 1 or more",
         prepare=_damage("step_2/adapter/adapter_config.json", _rank_null), needs_run=True),
    Case("garbage_training_state", lambda e: e.train(LORA, *RUN, "resume_from_checkpoint=True"),
         ("step_2/training_state.pt: it is not a pickle of tensors; the file is damaged or not a torch file"),
         prepare=_damage("step_2/training_state.pt", _garbage), needs_run=True),
    Case("truncated_training_state", lambda e: e.train(LORA, *RUN, "resume_from_checkpoint=True"),
         ("step_2/training_state.pt: PytorchStreamReader failed reading zip archive: failed finding central "
          "directory; the file is damaged"),
         prepare=_damage("step_2/training_state.pt", _cut_in_half), needs_run=True),
    Case("adapter_config_rank_null_in_generate",
         lambda e: _generate(e, _damaged_adapter(e, _rank_null, "adapter_config.json")),
         "adapter/adapter_config.json: r is null", needs_run=True),
    Case("adapter_config_rank_null_in_chat",
         lambda e: ["chat", str(e.folder), "--adapter", str(_damaged_adapter(e, _rank_null, "adapter_config.json")),
                    "--device", "cpu"],
         "adapter/adapter_config.json: r is null", needs_run=True),
    Case("truncated_adapter_in_generate",
         lambda e: _generate(e, _damaged_adapter(e, _cut_in_half, "adapter_model.safetensors")),
         ("cannot read", "adapter/adapter_model.safetensors", "damaged or incomplete"), needs_run=True),
    Case("truncated_adapter_in_merge_lora",
         lambda e: ["merge_lora", "--adapter", str(_damaged_adapter(e, _cut_in_half, "adapter_model.safetensors")),
                    "--base", str(e.folder), "--output-dir", str(e.out / "merged")],
         ("cannot read", "adapter/adapter_model.safetensors", "damaged or incomplete"), needs_run=True),
    Case("final_without_training_state",
         lambda e: e.train(LORA, *RUN, "max_steps_per_epoch=8", "resume_from_checkpoint=True"),
         ("final has no training state (tunelib kept none with the final model before), so the finished run "
          "cannot be extended from it; set resume_from_checkpoint=", "step_4 to continue from its last step checkpoint"),
         prepare=_final_without_state, needs_run=True),
    Case("dtype_changed_on_resume",
         lambda e: e.train(LORA, *RUN, f"resume_from_checkpoint={e.out / 'step_2'}", "dtype=bf16"),
         ("cannot resume from", "step_2: dtype 'fp32' -> 'bf16' changed"), prepare=_copy_run(), needs_run=True),
]


# -- the test ------------------------------------------------------------------------------


def _snapshot(paths: list[Path]) -> dict[str, str]:
    """Every file under `paths` (or the file itself) -> a hash of its bytes; folders as entries too."""
    found = {}
    for top in paths:
        if top.is_file():
            found[str(top)] = hashlib.sha256(top.read_bytes()).hexdigest()
            continue
        for root, dirs, files in os.walk(top):
            found[root] = "folder"
            for name in files:
                path = Path(root) / name
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def _checkpoint_folders(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir()) if out.is_dir() else []


def _run_tune_process(argv: list[str]) -> tuple[int, str, str]:
    """`tune ARGV` in a fresh process (the console script's `main`, from this checkout)."""
    env = dict(os.environ, HF_DATASETS_DISABLE_PROGRESS_BARS="1")
    proc = subprocess.run([sys.executable, "-m", "tunelib.cli.main", *argv], capture_output=True, text=True,
                          timeout=240, env=env, cwd=REPO)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_one_line_the_right_code_and_keeps_earlier_files(case, inputs, tmp_path, tune, monkeypatch,
                                                                        request):
    if case.needs_run:  # trained only when a case asks for it, so `-k` on a config case stays fast
        inputs.run = request.getfixturevalue("finished_run")
    env = Env(inputs, tmp_path, tmp_path / "out")
    if case.prepare is not None:
        case.prepare(env)
    # The user's own file in output_dir and in every checkpoint folder there: none may change.
    for folder in [env.out, *_checkpoint_folders(env.out)]:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / SENTINEL).write_text(f"notes in {folder.name}\n")
    kept = [p for p in _checkpoint_folders(env.out)] + (case.guard(env) if case.guard else [])
    before_out, before_kept = _snapshot([env.out]), _snapshot(kept)
    if case.patch is not None:
        case.patch(monkeypatch, env)

    argv = case.argv(env)
    if case.subprocess:
        code, out, err = _run_tune_process(argv)
    else:
        try:
            code, out, err = tune(*argv)
        except Exception:  # noqa: BLE001 - shown as the failure: bad input must never raise out of `tune`
            pytest.fail(f"`tune {' '.join(argv[:4])} ...` raised instead of printing one line:\n"
                        f"{traceback.format_exc()}")

    assert "Traceback" not in out + err, err[-3000:]
    assert code == case.code, f"exit code {code}, expected {case.code}; stderr:\n{err[-3000:]}"
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"stderr has {len(lines)} lines, expected one:\n{err[-3000:]}"
    assert lines[0].startswith("tune: error: "), lines[0]
    for fragment in (case.message,) if isinstance(case.message, str) else case.message:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"

    assert (env.out / SENTINEL).read_text() == "notes in out\n"
    assert _snapshot(kept) == before_kept, "an earlier checkpoint or a guarded file changed"
    if not case.trains:  # refused before training: output_dir is exactly as it was
        assert _snapshot([env.out]) == before_out
    else:  # it trained, then stopped: no half-written checkpoint is left beside the intact one
        assert not [p.name for p in env.out.iterdir() if p.name.endswith(".tmp")]

    if case.after is not None:
        monkeypatch.undo()
        case.after(env, tune)


def test_the_catalogue_is_large_and_each_case_named_once():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 60


def test_docs_troubleshooting_explains_every_case():
    # Each message there is tagged with the ids of its cases, e.g. "[empty_dataset]".
    page = (REPO / "docs/troubleshooting.md").read_text(encoding="utf-8")
    tagged = {name.strip() for tags in re.findall(r"\[([a-z0-9_, ]+)\]", page) for name in tags.split(",")}
    assert not [c.id for c in CASES if c.id not in tagged], "cases missing from docs/troubleshooting.md"
