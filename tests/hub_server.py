"""A small Hub-compatible HTTP server on 127.0.0.1 for tests: the endpoints the real `huggingface_hub` client
calls to create a repository and commit files, with committed files kept in memory.

Files are always answered `uploadMode: "regular"` at pre-upload, so their content arrives base64-encoded in the
NDJSON commit body and no LFS or Xet storage is involved. `fail_next(path_part, count, status)` makes the next
`count` requests whose path contains `path_part` fail, to test failure and retry. Requests the server does not
know are answered 404 and recorded in `unhandled`, which tests assert is empty.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

USER = "hf-kd-tester"
_REPO_PATH = re.compile(
    r"^/api/models/(?P<repo>[^/]+/[^/]+)/(?P<action>preupload|commit|revision|branch)/(?P<rev>.+)$"
)
_REPO_INFO = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)$")


@dataclass
class Commit:
    oid: str
    revision: str
    summary: str
    files: dict[str, bytes]


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})
    commits: list[Commit] = field(default_factory=list)


class HubServer:
    """`with HubServer() as hub:` serves on `hub.endpoint` until the block ends."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status answered)
        self.unhandled: list[tuple[str, str]] = []
        self.tokens_seen: set[str] = set()
        self._failures: list[list[Any]] = []  # [path_part, remaining, status]
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 30  # a stuck client connection cannot hold a thread forever

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _answer(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
                with server._lock:
                    server.requests.append((self.command, urlsplit(self.path).path, status))

            def _handle(self) -> None:
                body = self._body() if self.command in ("POST", "PUT") else b""
                path = unquote(urlsplit(self.path).path)
                auth = self.headers.get("Authorization", "")
                if auth.startswith("Bearer "):
                    server.tokens_seen.add(auth[len("Bearer ") :])
                status = server._take_failure(path)
                if status is not None:
                    self._answer(
                        status,
                        {"error": f"injected failure {status} on {path}"},
                        {"X-Error-Message": f"injected failure {status}"},
                    )
                    return
                try:
                    status, payload, headers = server.route(self.command, path, body)
                except Exception as err:  # a bug in this server must show up as an error, not a hang
                    status, payload, headers = 500, {"error": f"test hub server error: {err!r}"}, {}
                self._answer(status, payload, headers)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    # ---- control ----------------------------------------------------------------------------------------

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    def fail_next(self, path_part: str, count: int = 1, status: int = 500) -> None:
        """Answer the next `count` requests whose path contains `path_part` with `status`."""
        with self._lock:
            self._failures.append([path_part, count, status])

    def _take_failure(self, path: str) -> int | None:
        with self._lock:
            for failure in self._failures:
                if failure[0] in path and failure[1] > 0:
                    failure[1] -= 1
                    return failure[2]
        return None

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        return dict(self.repos[repo_id].branches[revision])

    # ---- the API ---------------------------------------------------------------------------------------

    def _repo_url(self, repo_id: str) -> str:
        return f"{self.endpoint}/{repo_id}"

    def route(self, method: str, path: str, body: bytes) -> tuple[int, Any, dict[str, str]]:
        if method == "GET" and path == "/api/agent-harnesses":  # the client's user-agent telemetry registry
            return 200, {"standardEnvVars": [], "harnesses": {}}, {}
        if method == "GET" and path == "/api/whoami-v2":
            return 200, {"type": "user", "name": USER, "orgs": [], "auth": {"type": "access_token"}}, {}
        if method == "POST" and path == "/api/repos/create":
            request = json.loads(body or b"{}")
            repo_id = f"{request.get('organization') or USER}/{request['name']}"
            with self._lock:
                if repo_id in self.repos:
                    return (
                        409,
                        {"error": "You already created this model repo", "url": self._repo_url(repo_id)},
                        {},
                    )
                self.repos[repo_id] = Repo(repo_id, request.get("visibility") == "private")
            return 200, {"url": self._repo_url(repo_id), "name": repo_id}, {}
        if method == "POST" and path == "/api/validate-yaml":
            import yaml

            content = json.loads(body)["content"]
            match = re.match(r"^---\n(.*?)\n---", content, re.S)
            try:
                meta = yaml.safe_load(match.group(1)) if match else None
            except yaml.YAMLError as err:
                return 400, {"errors": [{"message": f"invalid YAML: {err}"}]}, {}
            if not isinstance(meta, dict):
                return 200, {"errors": [], "warnings": [{"message": "empty or missing metadata"}]}, {}
            return 200, {"errors": [], "warnings": []}, {}
        m = _REPO_PATH.match(path)
        if m:
            repo = self.repos.get(m["repo"])
            if repo is None:
                return 404, {"error": f"Repository {m['repo']} not found"}, {"X-Error-Code": "RepoNotFound"}
            if m["action"] == "preupload" and method == "POST":
                files = json.loads(body)["files"]
                return (
                    200,
                    {
                        "files": [
                            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                            for f in files
                        ],
                        "commitOid": None,
                    },
                    {},
                )
            if m["action"] == "commit" and method == "POST":
                return self._commit(repo, m["rev"], body)
            if m["action"] == "branch" and method == "POST":
                with self._lock:
                    if m["rev"] in repo.branches:
                        return 409, {"error": f"Reference {m['rev']} already exists"}, {}
                    repo.branches[m["rev"]] = dict(repo.branches["main"])
                return 200, {}, {}
            if m["action"] == "revision" and method == "GET":
                return self._info(repo, m["rev"])
        m = _REPO_INFO.match(path)
        if m and method == "GET" and m["repo"] in self.repos:
            return self._info(self.repos[m["repo"]], "main")
        with self._lock:
            self.unhandled.append((method, path))
        return 404, {"error": f"test hub server does not implement {method} {path}"}, {}

    def _commit(self, repo: Repo, revision: str, body: bytes) -> tuple[int, Any, dict[str, str]]:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        files: dict[str, bytes] = {}
        deleted: list[str] = []
        for line in lines:
            if line["key"] == "file":
                value = line["value"]
                if value.get("encoding") != "base64":
                    return 400, {"error": f"unsupported encoding {value.get('encoding')!r}"}, {}
                files[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] in ("deletedFile", "deletedFolder"):
                deleted.append(line["value"]["path"])
            elif line["key"] != "header":
                # lfsFile would mean the client took the LFS path, which this server never offers
                return 400, {"error": f"unsupported commit operation {line['key']!r}"}, {}
        oid = hashlib.sha1(body).hexdigest()
        with self._lock:
            branch = repo.branches.get(revision)
            if branch is None:
                return 404, {"error": f"Invalid rev id: {revision}"}, {"X-Error-Code": "RevisionNotFound"}
            for path in deleted:
                for name in [n for n in branch if n == path or n.startswith(path.rstrip("/") + "/")]:
                    del branch[name]
            branch.update(files)
            repo.commits.append(Commit(oid, revision, header.get("summary", ""), files))
        return (
            200,
            {"success": True, "commitOid": oid, "commitUrl": f"{self._repo_url(repo.repo_id)}/commit/{oid}"},
            {},
        )

    def _info(self, repo: Repo, revision: str) -> tuple[int, Any, dict[str, str]]:
        branch = repo.branches.get(revision)
        if branch is None:
            return 404, {"error": f"Revision {revision} not found"}, {"X-Error-Code": "RevisionNotFound"}
        sha = repo.commits[-1].oid if repo.commits else "0" * 40
        return (
            200,
            {
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "sha": sha,
                "private": repo.private,
                "siblings": [{"rfilename": name} for name in sorted(branch)],
            },
            {},
        )


@contextmanager
def hub_endpoint(monkeypatch: Any, server: HubServer):
    """Point `huggingface_hub` and Transformers' shared client at `server` for the duration of a test."""
    import huggingface_hub.constants as constants
    import transformers.utils.hub as transformers_hub

    monkeypatch.setattr(constants, "ENDPOINT", server.endpoint)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # conftest sets offline mode for every test
    monkeypatch.setattr(transformers_hub, "_hf_api", None)  # its HfApi read ENDPOINT when it was built
    try:  # the client fetches an agent-telemetry registry and caches it under HF_HOME: keep it in memory
        from huggingface_hub.utils import _detect_agent

        monkeypatch.setattr(_detect_agent, "_registry", {"standardEnvVars": [], "harnesses": {}})
    except (ImportError, AttributeError):
        pass
    try:
        yield server
    finally:
        transformers_hub._hf_api = None
