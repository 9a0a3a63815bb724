"""`tune download` end to end through huggingface_hub, against a loopback server playing the Hub."""

from __future__ import annotations

import json
import socket

import pytest

from support.fake_hub import FakeHub

TOKEN = "hf_verysecret123"
REPOS = {
    "org/Tiny-1B": {"config.json": b'{"model_type": "llama"}', "model.safetensors": b"weights",
                    "original/consolidated.00.pth": b"pickle", "original/tokenizer.model": b"tok"},
    "org/Gated-8B": {"config.json": b"{}"},
}


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with FakeHub(REPOS, gated={"org/Gated-8B"}, token=TOKEN) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        _reload_hub_constants(monkeypatch, server.url)
        yield server


def _reload_hub_constants(monkeypatch, url):
    # huggingface_hub reads HF_ENDPOINT once at import; point its constants at the fake Hub.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def test_download_with_ignore_patterns(tune, hub, tmp_path):
    out = tmp_path / "Tiny-1B"
    code, stdout, err = tune("download", "org/Tiny-1B", "--output-dir", str(out),
                             "--ignore-patterns", "original/consolidated.00.pth")
    assert code == 0, err
    assert (out / "config.json").read_bytes() == REPOS["org/Tiny-1B"]["config.json"]
    assert (out / "original/tokenizer.model").is_file()
    assert not (out / "original/consolidated.00.pth").exists()
    assert json.loads((out / "original_repo_id.json").read_text()) == {"repo_id": "org/Tiny-1B"}
    assert f"Downloaded org/Tiny-1B to {out}" in stdout
    assert not any("consolidated" in path for _, path, _ in hub.requests if "resolve" in path)


def test_default_output_dir_is_tmp_name(tune, hub, monkeypatch, tmp_path):
    from tunelib.cli import download

    assert str(download.DEFAULT_PARENT) == "/tmp"
    monkeypatch.setattr(download, "DEFAULT_PARENT", tmp_path)
    code, _, err = tune("download", "org/Tiny-1B")
    assert code == 0, err
    assert (tmp_path / "Tiny-1B" / "config.json").is_file()


def test_gated_repo_without_token(tune, hub, tmp_path):
    code, _, err = tune("download", "org/Gated-8B", "--output-dir", str(tmp_path / "g"))
    assert code == 2 and err.count("\n") == 1
    assert "gated or private" in err and "--hf-token or HF_TOKEN" in err and "Traceback" not in err


def test_gated_repo_with_wrong_token_says_request_access(tune, hub, tmp_path):
    code, _, err = tune("download", "org/Gated-8B", "--output-dir", str(tmp_path / "g"), "--hf-token", "hf_wrong")
    assert code == 2 and "no access" in err and "hf_wrong" not in err


def test_token_from_env_is_sent_and_never_printed(tune, hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    code, out, err = tune("download", "org/Gated-8B", "--output-dir", str(tmp_path / "g"))
    assert code == 0, err
    assert TOKEN not in out and TOKEN not in err
    assert any(auth == f"Bearer {TOKEN}" for _, _, auth in hub.requests)


def test_missing_repo(tune, hub, tmp_path):
    code, _, err = tune("download", "org/Nope", "--output-dir", str(tmp_path / "n"))
    assert code == 2 and "repository 'org/Nope' not found" in err


def test_no_network(tune, monkeypatch, tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _reload_hub_constants(monkeypatch, f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    code, _, err = tune("download", "org/Tiny-1B", "--output-dir", str(tmp_path / "x"))
    assert code == 2 and "cannot reach the Hugging Face Hub" in err


def test_bad_repo_id(tune, tmp_path):
    code, _, err = tune("download", "justaname", "--output-dir", str(tmp_path / "x"))
    assert code == 2 and "OWNER/NAME" in err
