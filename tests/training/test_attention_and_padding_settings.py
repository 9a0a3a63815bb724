"""The attention_backend and pad_to_multiple_of settings, as a user sets them on `tune run`."""

from __future__ import annotations

import pytest

import tunelib.data.loader
from support.recipes import finetune, tiny_model_folder, words
from tunelib.models import flex

LORA = ("lora_finetune_single_device", "llama3_2/1B_lora_tunelib")
FAST = ("lr_scheduler.num_warmup_steps=0", "optimizer.lr=3e-3", "max_steps_per_epoch=3")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("models"), "llama3_2")


def _recording_lengths(monkeypatch) -> list[int]:
    lengths = []
    collate = tunelib.data.loader.collate

    def recorded(samples, **kwargs):
        batch = collate(samples, **kwargs)
        lengths.append(batch["input_ids"].shape[1])
        return batch

    monkeypatch.setattr(tunelib.data.loader, "collate", recorded)
    return lengths


def test_pad_to_multiple_of_pads_unpacked_batches_and_keeps_the_losses(tune, folder, tmp_path, monkeypatch):
    lengths = _recording_lengths(monkeypatch)
    plain = finetune(tune, *LORA, folder, tmp_path / "plain", *FAST)
    plain_lengths = list(lengths)
    lengths.clear()
    padded = finetune(tune, *LORA, folder, tmp_path / "padded", *FAST, "pad_to_multiple_of=64")
    assert plain.code == 0 and padded.code == 0, plain.err + padded.err
    assert any(n % 64 for n in plain_lengths), plain_lengths  # else the test shows nothing
    assert lengths and all(n % 64 == 0 for n in lengths), lengths
    # Padding positions are masked out of attention and the loss: the run trains the same.
    assert padded.losses == pytest.approx(plain.losses, abs=1e-5)


@pytest.mark.parametrize("overrides, message", [
    (("pad_to_multiple_of=0",), "pad_to_multiple_of=0; it must be 1 or more, or null"),
    (("attention_backend=flex",), "attention_backend=flex: "),
    (("attention_backend=flash",), "attention_backend"),
])
def test_attention_and_padding_settings_that_cannot_work_are_refused(tune, folder, tmp_path, overrides, message):
    if overrides == ("attention_backend=flex",) and flex.backward_problem("cpu") is None:
        pytest.skip("this torch trains with flex attention on CPU: nothing to refuse")
    result = finetune(tune, *LORA, folder, tmp_path / "out", *overrides)
    assert result.code == 2 and message in result.err and "Traceback" not in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1, result.err
    code, _, err = tune("validate", LORA[1], "--recipe", LORA[0], *words(folder, tmp_path / "v", None, overrides))
    assert code == 2 and message in err


def test_attention_backend_sdpa_trains_as_auto_on_cpu(tune, folder, tmp_path):
    auto = finetune(tune, *LORA, folder, tmp_path / "auto", *FAST)
    sdpa = finetune(tune, *LORA, folder, tmp_path / "sdpa", *FAST, "attention_backend=sdpa")
    assert auto.code == 0 and sdpa.code == 0, auto.err + sdpa.err
    assert sdpa.losses == auto.losses  # on CPU "auto" is "sdpa": the same kernels, bit for bit
