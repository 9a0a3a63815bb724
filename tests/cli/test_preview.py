"""`tune preview`: the first samples of a config's training data, trained tokens marked."""

from __future__ import annotations

import json


def test_preview_marks_exactly_the_response(tune, tmp_path):
    code, out, err = tune("preview", "demo/tiny_lora", "--num-samples", "2")
    assert code == 0, err
    first = json.loads(next(open(_demo_data())))
    assert out.count("--- sample") == 2
    assert f"«{first['output']}<|im_end|>»" in out  # the response (and end of turn) is all that trains
    assert first["input"] in out


def test_preview_applies_overrides_and_checks_them(tune):
    code, out, err = tune("preview", "demo/tiny_lora", "dataset.train_on_input=True", "--num-samples=1")
    assert code == 0, err
    first = json.loads(next(open(_demo_data())))
    assert f"«{first['input']}<|im_end|>»" in out  # with train_on_input the question trains too
    code, _, err = tune("preview", "demo/tiny_lora", "dataset.train_on_inptu=True")
    assert code == 2 and "did you mean 'dataset.train_on_input'" in err and "Traceback" not in err


def test_preview_bad_count(tune):
    code, _, err = tune("preview", "demo/tiny_lora", "--num-samples", "zero")
    assert code == 2 and "positive number" in err


def _demo_data():
    from tunelib.config.loading import _assets

    return f"{_assets()}/demo/chat_tiny.jsonl"
