"""`tune upload`: a model folder and its model card committed through huggingface_hub to a
loopback server playing the Hub (the endpoints create_repo, preupload and commit use), the
repo private by default, the token sent to the Hub and found nowhere else."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

TOKEN = "hf_uploadsecret987"
COMMIT = "feedface" * 5


class StubHub:
    """Answers create_repo, preupload and commit; keeps what was committed and each request."""

    def __init__(self, refuse: int | None = None):
        self.requests: list[tuple[str, str, str | None]] = []
        self.created: list[dict] = []
        self.validated: list[str] = []
        self.files: dict[str, bytes] = {}
        self.refuse = refuse
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                hub._answer(self)

            def do_GET(self):
                hub._answer(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def _answer(self, h: BaseHTTPRequestHandler) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        self.requests.append((h.command, h.path, h.headers.get("Authorization")))
        parts = h.path.split("?")[0].strip("/").split("/")
        if self.refuse:
            return self._send(h, self.refuse, {"error": "Invalid credentials in Authorization header"})
        if parts == ["api", "repos", "create"]:
            self.created.append(json.loads(body))
            name = self.created[-1]
            return self._send(h, 200, {"url": f"{self.url}/{name.get('organization')}/{name['name']}"})
        if parts == ["api", "validate-yaml"]:  # the client checks a README's front matter before committing it
            self.validated.append(json.loads(body)["content"])
            return self._send(h, 200, {"errors": [], "warnings": []})
        if parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "preupload":
            files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                     for f in json.loads(body)["files"]]
            return self._send(h, 200, {"files": files})
        if parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "commit":
            for line in body.decode().splitlines():
                entry = json.loads(line)
                if entry["key"] == "file":
                    self.files[entry["value"]["path"]] = base64.b64decode(entry["value"]["content"])
            return self._send(h, 200, {"commitUrl": f"{self.url}/{parts[2]}/{parts[3]}/commit/{COMMIT}",
                                       "commitOid": COMMIT})
        return self._send(h, 404, {"error": f"not served by the stub: {h.command} {h.path}"})

    @staticmethod
    def _send(h, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        if status >= 400:
            h.send_header("X-Error-Message", body["error"])
        h.end_headers()
        h.wfile.write(data)


def _point_hub_at(monkeypatch, tmp_path, url: str) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", url)  # read once at import
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with StubHub() as server:
        _point_hub_at(monkeypatch, tmp_path, server.url)
        yield server


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A LoRA run's output folder as tunelib writes it, on a base that `tune download` fetched."""
    base = tmp_path / "Base-1B"
    base.mkdir()
    (base / "original_repo_id.json").write_text(json.dumps({"repo_id": "org/Base-1B"}))
    run = tmp_path / "run"
    adapter, merged = run / "final" / "adapter", run / "final" / "merged"
    adapter.mkdir(parents=True)
    merged.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": str(base), "r": 8, "lora_alpha": 16, "peft_type": "LORA"}))
    (adapter / "adapter_model.safetensors").write_bytes(b"adapter weights")
    (merged / "config.json").write_text("{}")
    (merged / "model.safetensors").write_bytes(b"merged weights")
    (run / "config.yaml").write_text(
        f"output_dir: {run}\nmodel:\n  _component_: tunelib.models.llama3_2.lora_llama3_2_1b\n  lora_rank: 8\n"
        f"checkpoint_dir: {base}\ndataset:\n  _component_: tunelib.data.alpaca_dataset\n  source: my/data\n"
        "epochs: 1\n")
    (run / "summary.json").write_text(json.dumps({"steps": 40, "trained_tokens": 12345, "first_loss": 2.5,
                                                  "last_loss": 1.23456, "val_loss": None}))
    return run


def _card(text: str) -> tuple[str, str]:
    _, front, body = text.split("---\n", 2)
    return front, body


def test_an_adapter_goes_up_private_with_a_model_card(tune, hub, run_dir, tmp_path):
    adapter = run_dir / "final" / "adapter"
    code, out, err = tune("upload", str(adapter), "me/my-lora", "--token", TOKEN)
    assert code == 0, err
    assert len(hub.created) == 1 and _private(hub.created[0]) is True
    assert (hub.created[0].get("organization"), hub.created[0]["name"]) == ("me", "my-lora")
    assert set(hub.files) == {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    assert hub.files["adapter_model.safetensors"] == b"adapter weights"
    assert hub.validated == [hub.files["README.md"].decode()]
    front, body = _card(hub.files["README.md"].decode())
    meta = yaml.safe_load(front)
    assert meta["base_model"] == "org/Base-1B" and meta["library_name"] == "peft"
    assert {"tunelib", "lora"} <= set(meta["tags"])
    assert "source: my/data" in body  # the data
    assert "| last loss | 1.2346 |" in body  # the results
    assert "lora_rank: 8" in body  # the training config
    assert "AutoPeftModelForCausalLM" in body
    assert "Uploaded 3 files to" in out and "(private, commit feedfacefe)" in out
    assert not (adapter / "README.md").exists()  # the card goes to the Hub, not into the folder
    assert _writes(hub) and all(auth == f"Bearer {TOKEN}" for _, _, auth in _writes(hub))
    _assert_secret_kept(TOKEN, out + err, tmp_path)


def test_a_readme_the_user_wrote_is_uploaded_as_it_is_and_public_is_public(tune, hub, run_dir):
    merged = run_dir / "final" / "merged"
    (merged / "README.md").write_text("# My own card\n")
    code, out, err = tune("upload", str(merged), "me/my-model", "--public", "--token", TOKEN)
    assert code == 0, err
    assert _private(hub.created[0]) is False
    assert hub.files["README.md"] == b"# My own card\n"
    assert "(public," in out


def test_a_run_folder_uploads_its_final_model_and_the_token_comes_from_hf_token(tune, hub, run_dir, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    code, out, err = tune("upload", str(run_dir), "me/run")
    assert code == 0, err
    assert set(hub.files) == {"adapter/adapter_config.json", "adapter/adapter_model.safetensors",
                              "merged/config.json", "merged/model.safetensors", "README.md"}
    front, body = _card(hub.files["README.md"].decode())
    assert "library_name: transformers" in front and "base_model: org/Base-1B" in front
    assert _writes(hub) and all(auth == f"Bearer {TOKEN}" for _, _, auth in _writes(hub))


def test_a_refused_token_is_one_line_that_does_not_show_it(tune, run_dir, monkeypatch, tmp_path):
    with StubHub(refuse=401) as server:
        _point_hub_at(monkeypatch, tmp_path, server.url)
        code, out, err = tune("upload", str(run_dir / "final" / "merged"), "me/x", "--token", TOKEN)
    assert code == 2
    assert err.startswith("tune: error: the Hub did not accept your token for me/x") and err.count("\n") == 1, err
    _assert_secret_kept(TOKEN, out + err, tmp_path)


@pytest.mark.parametrize("words, message", [
    (["{run}/final/merged", "not-a-repo-id"], "repo id 'not-a-repo-id' must look like owner/name"),
    (["{tmp}/missing", "me/x"], "does not exist"),
    (["{tmp}", "me/x"], "holds no model (config.json) or adapter (adapter_config.json) to upload"),
])
def test_bad_input_is_one_line_and_exit_2_before_the_hub_is_asked(tune, hub, run_dir, tmp_path, words, message):
    code, _, err = tune("upload", *[w.format(run=run_dir, tmp=tmp_path) for w in words], "--token", TOKEN)
    assert code == 2
    assert err.startswith("tune: error: ") and err.count("\n") == 1 and message in err, err
    assert _writes(hub) == []


def _writes(hub: StubHub) -> list[tuple[str, str, str | None]]:
    """The requests of the upload itself (the client may also ask the Hub other things anonymously)."""
    return [r for r in hub.requests if r[0] == "POST"]


def _private(created: dict) -> bool:
    # huggingface_hub 1.x sends {"private": bool}; 2.x sends {"visibility": "private" | "public"}.
    return created["visibility"] == "private" if "visibility" in created else created["private"]


def _assert_secret_kept(token: str, output: str, root: Path) -> None:
    assert token not in output
    for path in root.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path


def test_the_cached_login_is_used_when_no_token_is_given(tune, hub, run_dir, monkeypatch, tmp_path):
    from huggingface_hub import constants

    cached = tmp_path / "hf_home" / "token"
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(TOKEN)  # what `hf auth login` leaves
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(cached))
    code, out, err = tune("upload", str(run_dir / "final" / "merged"), "me/m")
    assert code == 0, err
    assert _writes(hub) and all(auth == f"Bearer {TOKEN}" for _, _, auth in _writes(hub))
    assert TOKEN not in out + err
