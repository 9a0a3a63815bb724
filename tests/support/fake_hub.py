"""A loopback HTTP server that answers the Hugging Face Hub's file API for `tune download` tests.

It serves one public repo, one gated repo (401 without the right token, 403 with a wrong
one) and 404 for everything else, and records each request's path and whether it carried
the token, so tests can check what `huggingface_hub` really asked for.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """Serve `repos = {repo_id: {path: bytes}}`; repos in `gated` need `Bearer <token>`."""

    def __init__(self, repos: dict[str, dict[str, bytes]], gated: set[str] = frozenset(), token: str = "hf_secret"):
        self.repos, self.gated, self.token = repos, set(gated), token
        self.requests: list[tuple[str, str, str | None]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_HEAD(self):
                hub._answer(self, head=True)

            def do_GET(self):
                hub._answer(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    # -- request handling -------------------------------------------------------------------

    def _answer(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        path = unquote(urlparse(h.path).path)
        auth = h.headers.get("Authorization")
        self.requests.append((h.command, path, auth))
        repo_id, kind, rest = self._route(path)
        if repo_id is None or repo_id not in self.repos:
            return self._send(h, 404, {"error": "Repository not found"}, head, error_code="RepoNotFound")
        if repo_id in self.gated and auth != f"Bearer {self.token}":
            status = 401 if auth is None else 403
            msg = f"Access to model {repo_id} is restricted. You must have access to it and be authenticated."
            return self._send(h, status, {"error": msg}, head, error_code="GatedRepo")
        files = self.repos[repo_id]
        if kind == "info":
            siblings = [{"rfilename": p} for p in sorted(files)]
            return self._send(h, 200, {"id": repo_id, "sha": COMMIT, "siblings": siblings}, head)
        if kind == "tree":
            tree = [self._tree_entry(p, data) for p, data in sorted(files.items())]
            return self._send(h, 200, tree, head)
        if rest not in files:
            return self._send(h, 404, {"error": "Entry not found"}, head, error_code="EntryNotFound")
        return self._send_file(h, files[rest], head)

    @staticmethod
    def _route(path: str):
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 5:
            repo_id = "/".join(parts[2:4])
            if parts[4] == "revision":
                return repo_id, "info", None
            if parts[4] == "tree":
                return repo_id, "tree", None
        if len(parts) >= 5 and parts[2] == "resolve":
            return "/".join(parts[:2]), "file", "/".join(parts[4:])
        return None, None, None

    @staticmethod
    def _tree_entry(path: str, data: bytes) -> dict:
        oid = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        return {"type": "file", "path": path, "size": len(data), "oid": oid}

    @staticmethod
    def _send(h, status: int, body, head: bool, error_code: str | None = None) -> None:
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        if error_code:
            h.send_header("X-Error-Code", error_code)
            h.send_header("X-Error-Message", body["error"])
        h.end_headers()
        if not head:
            h.wfile.write(data)

    @staticmethod
    def _send_file(h, data: bytes, head: bool) -> None:
        etag = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        h.send_response(200)
        h.send_header("Content-Length", str(len(data)))
        h.send_header("ETag", f'"{etag}"')
        h.send_header("X-Repo-Commit", COMMIT)
        h.end_headers()
        if not head:
            h.wfile.write(data)
