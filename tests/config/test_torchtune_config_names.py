"""Same name, same training: every torchtune config name gives torchtune's values, or one line saying why not.

torchtune's files come from its released wheel (tests/support/torchtune_wheel.py); they are
compared here key by key with the tunelib config the same name resolves to, after turning
torchtune's component names into tunelib's.
"""

from __future__ import annotations

import re

import pytest
import yaml
from support.torchtune_wheel import config_names, torchtune_main, torchtune_release

from tunelib import registry

# torchtune's optimizers and their tunelib twins (the same update, without bitsandbytes' paging).
OPTIMIZERS = {"torch.optim.AdamW": "torch.optim.AdamW", "bitsandbytes.optim.PagedAdamW": "torch.optim.AdamW",
              "bitsandbytes.optim.PagedAdamW8bit": "torchao.optim.AdamW8bit"}
TOP = ("batch_size", "gradient_accumulation_steps", "epochs", "max_steps_per_epoch", "seed", "shuffle",
       "clip_grad_norm", "compile", "dtype", "enable_activation_checkpointing", "enable_activation_offloading",
       "optimizer_in_bwd", "fsdp_cpu_offload", "save_adapter_weights_only", "run_val_every_n_steps",
       "tasks", "limit", "max_seq_length", "fake_quant_after_n_steps")
LORA = ("lora_rank", "lora_alpha", "lora_dropout", "apply_lora_to_mlp", "apply_lora_to_output", "use_dora")
# What tunelib means when it leaves a key out: LoRA never steps in backward.
ABSENT = {"optimizer_in_bwd": False}


@pytest.fixture(scope="session", params=["release", "main"])
def torchtune(request):
    """torchtune's config names -> (recipe, file): the 0.6.1 wheel's, or those only a main checkout has.

    A name both have keeps the release's values (what `pip install torchtune` runs), so main is
    checked for its extra names only.
    """
    release = config_names(torchtune_release())
    if request.param == "release":
        return release
    folder = torchtune_main()
    if folder is None:
        pytest.skip("set TUNELIB_TORCHTUNE_MAIN to a torchtune main checkout to check its extra names")
    return {n: v for n, v in config_names(folder).items() if n not in release}


def _number(value):
    return float(value) if isinstance(value, str) and re.fullmatch(r"-?[0-9.]+e-?[0-9]+", value) else value


def training(cfg: dict) -> dict:
    """The values that decide how a run trains, in tunelib's terms."""
    out = {k: _number(cfg.get(k, ABSENT.get(k))) for k in TOP if k in cfg or k in ABSENT}
    model = cfg.get("model") or {}
    builder = str(model.get("_component_", "")).rsplit(".", 1)[-1]
    out["model.quantize_base"] = builder.startswith("qlora_") or bool(model.get("quantize_base"))
    # The same architecture and size (Mistral's v0.1 is torchtune's mistral_7b), and the same weights.
    out["model.builder"] = re.sub(r"^q?lora_|_(instruct|base)$|_v0_1$", "", builder) or None
    folder = cfg.get("checkpoint_dir") or (cfg.get("checkpointer") or {}).get("checkpoint_dir")
    out["checkpoint_dir"] = str(folder).rstrip("/").removesuffix("/original")
    out.update({f"model.{k}": model[k] for k in LORA if k in model})
    if "lora_attn_modules" in model:
        out["model.lora_attn_modules"] = ["o_proj" if m == "output_proj" else m for m in model["lora_attn_modules"]]
    if "tokenizer" in cfg:
        out["tokenizer.max_seq_len"] = cfg["tokenizer"].get("max_seq_len")
    for node in ("dataset", "dataset_val", "lr_scheduler", "quantizer"):
        for key, value in (cfg.get(node) or {}).items():
            out[f"{node}.{key}"] = value.rsplit(".", 1)[-1].removesuffix("ModuleSwap") if key == "_component_" else value
    optimizer = dict(cfg.get("optimizer") or {})
    if optimizer:
        optimizer["_component_"] = OPTIMIZERS.get(optimizer["_component_"], optimizer["_component_"])
        if not optimizer["_component_"].startswith("torch."):
            optimizer.pop("fused", None)  # torchao's optimizers have no fused kernel switch
        out.update({f"optimizer.{k}": _number(v) for k, v in optimizer.items()})
    return out


def differences(name: str, torchtune_file) -> list[str]:
    theirs = training(yaml.safe_load(torchtune_file.read_text()))
    ours = training(yaml.safe_load(registry.find_config(name).read_text()))
    if ours["model.builder"] in (None, "from_hf_config"):  # built from the folder's config.json (evaluation too)
        del theirs["model.builder"], ours["model.builder"]
    return [f"{k}: torchtune {theirs.get(k)!r}, tunelib {ours.get(k)!r}"
            for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)]


def _unsupported(name: str) -> bool:
    return any(p in name for p in ("vision", "llama4/", "dev/", "ppo", "generation_v2",
                                   "generation_distributed", "early_exit"))


def test_every_torchtune_name_carries_torchtune_values(torchtune):
    """Each name whose recipe tunelib has resolves to a config with torchtune's hyperparameters."""
    runnable = {n: f for n, (_, f) in torchtune.items() if "/" in n and not _unsupported(n)}
    assert runnable
    problems = {}
    for name, file in runnable.items():
        try:
            problems[name] = differences(name, file)
        except Exception as e:  # a name that does not resolve is a problem like any other
            problems[name] = [f"{type(e).__name__}: {e}"]
    assert {n: d for n, d in problems.items() if d} == {}


def test_torchtune_names_tunelib_cannot_run_say_so_in_one_line(torchtune, tune, tmp_path):
    """Vision, Llama 4, dev/ and PPO names: `tune run` and `tune cp` say what is missing."""
    lacking = {n: r for n, (r, _) in torchtune.items() if _unsupported(n)}
    assert lacking
    for name, recipe in lacking.items():
        for words in (("run", recipe, "--config", name), ("run", "full_finetune_distributed", "--config", name),
                      ("cp", name, str(tmp_path / "copy.yaml"))):
            code, out, err = tune(*words)
            assert code == 2 and len(err.strip().splitlines()) == 1, (words, err)
            assert "tunelib does not have" in err and "torchtune" in err, (words, err)
            assert not (tmp_path / "copy.yaml").exists()


def test_torchtune_values_and_tunelib_choices_have_separate_names(tune):
    """torchtune's name gives torchtune's data set and lengths; tunelib's own variant keeps tunelib's."""
    torchtune_cfg = yaml.safe_load(registry.find_config("llama3_1/8B_lora").read_text())
    own = yaml.safe_load(registry.find_config("llama3_1/8B_lora_tunelib").read_text())
    assert torchtune_cfg["tokenizer"]["max_seq_len"] is None and own["tokenizer"]["max_seq_len"] == 2048
    assert torchtune_cfg["dataset"]["_component_"] != own["dataset"]["_component_"]
    code, out, _ = tune("ls", "llama3_1/8B_lora")
    rows = {re.search(r"llama3_1/8B_lora\S*", line)[0]: line for line in out.splitlines() if "llama3_1/8B_lora" in line}
    assert "(torchtune 0.6.1)" in rows["llama3_1/8B_lora_single_device"]
    assert "torchtune" not in rows["llama3_1/8B_lora_tunelib"]


@pytest.mark.parametrize(("recipe", "name"), [
    ("lora_finetune_single_device", "llama3_2/1B_lora_single_device"),
    ("full_finetune_single_device", "llama3_2/1B_full_single_device"),
])
def test_a_config_under_a_torchtune_name_trains(tune, tmp_path, recipe, name):
    """Pointed at a tiny model and a local file, torchtune's values train as they are.

    (LoRA with fused AdamW; full with torchao's 8-bit AdamW stepped in backward.)
    """
    from support.recipes import finetune, tiny_model_folder

    folder = tiny_model_folder(tmp_path / "models", "llama3_2")
    result = finetune(tune, recipe, name, folder, tmp_path / "out", "max_steps_per_epoch=2")
    assert result.code == 0, result.err
    assert len(result.losses) == 2
