"""A real HTTP server that answers like the Hugging Face Hub, for the download tests (no internet needed).

It serves the endpoints huggingface_hub 2.4.0's `HfApi.model_info` and `snapshot_download` call, with the
headers they read (see huggingface_hub/file_download.py `get_hf_file_metadata` and utils/_http.py
`hf_raise_for_status`):

- GET  /api/models/{repo}/revision/{rev}[?blobs=True]  repo info: `sha`, `siblings` (sizes with blobs)
- GET  /api/models/{repo}/tree/{rev}?recursive=True    file listing (snapshot_download with a commit sha)
- HEAD /{repo}/resolve/{rev}/{path}                    X-Repo-Commit, ETag, Content-Length; for LFS files a 302
                                                       to the "CDN" with X-Linked-Etag / X-Linked-Size
- GET  /{repo}/resolve/{rev}/{path}                    the bytes of a regular file (Range supported)
- GET  /cdn/{sha256}                                   the bytes of an LFS file, on a second port: another
                                                       origin, so huggingface_hub drops the token there as it
                                                       does for the real CDN

Errors carry the Hub's X-Error-Code so huggingface_hub raises its own classes: RepoNotFound (401 without a
token, 404 with one, as the Hub does), GatedRepo (401 without a token, 403 with one not allowed), RevisionNotFound,
EntryNotFound, and 401 "Invalid credentials in Authorization header" for an unknown token. No X-Xet-* header is
ever sent, so the plain HTTP download path is used even with hf_xet installed.

Switches for failure tests: `cut(path)` sends half of a file's next GET and closes the connection; `stall(path)`
sends half and then waits (until `release()`), so a test can interrupt the client mid-file; `declare_size`
makes the metadata lie about a size (disk preflight). Every request is recorded with its headers.
"""

import hashlib
import json
import re
import socket
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

# files the real Hub stores with Git LFS (served through the CDN redirect)
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf", ".onnx", ".onnx.data", ".model", ".png")
API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/(?P<kind>revision|tree)/(?P<rev>[^/]+)(?P<sub>/.*)?$")
RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
CDN = re.compile(r"^/cdn/(?P<sha256>[0-9a-f]{64})$")
RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(path: str) -> bool:
    return path.endswith(LFS_SUFFIXES)


@dataclass
class Repo:
    revisions: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit sha -> {path: bytes}
    refs: dict[str, str] = field(default_factory=dict)  # branch -> commit sha
    gated: bool = False
    tokens: set[str] = field(default_factory=set)  # tokens that accepted the licence
    declared_sizes: dict[str, int] = field(default_factory=dict)  # path -> size the metadata claims

    def commit(self, rev: str) -> str | None:
        rev = self.refs.get(rev, rev)
        return rev if rev in self.revisions else None


@dataclass
class Request:
    server: str  # "hub" or "cdn"
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    file: str | None = None  # the repo file whose bytes this request was answered with


class HubServer:
    """Start with `with HubServer() as hub:`; `hub.endpoint` goes into HF_ENDPOINT."""

    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.blobs: dict[str, bytes] = {}  # sha256 -> bytes, for the CDN
        self.tokens: set[str] = set()  # every token the "Hub" knows (others get 401 invalid credentials)
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._cut: dict[str, tuple[int, float]] = {}  # path -> (GETs still to cut, share of the bytes sent)
        self._stall: set[str] = set()
        self.stalled = threading.Event()  # set when a stalled GET has sent its first half
        self._release = threading.Event()
        self._hub = self._cdn = None

    # ----- set-up -----
    def add_repo(
        self,
        repo_id: str,
        sha: str,
        files: dict[str, bytes],
        *,
        branch: str | None = "main",
        gated: bool = False,
        tokens: set[str] | None = None,
    ) -> Repo:
        repo = self.repos.setdefault(repo_id, Repo())
        repo.revisions[sha] = dict(files)
        if branch:
            repo.refs[branch] = sha
        repo.gated = repo.gated or gated
        repo.tokens |= tokens or set()
        self.tokens |= tokens or set()
        for data in files.values():
            self.blobs[hashlib.sha256(data).hexdigest()] = data
        return repo

    def declare_size(self, repo_id: str, path: str, size: int) -> None:
        self.repos[repo_id].declared_sizes[path] = size

    def cut(self, path: str, times: int = 1, keep: float = 0.5) -> None:
        """The next `times` GETs of `path` send `keep` of the bytes they owe, then the connection is closed."""
        with self._lock:
            self._cut[path] = (times, keep)

    def stall(self, path: str) -> None:
        with self._lock:
            self._stall.add(path)

    def release(self) -> None:
        with self._lock:
            self._stall.clear()
        self._release.set()

    # ----- inspection -----
    def gets(self, path: str | None = None) -> list[Request]:
        """GETs that sent file content (from the resolve URL or the CDN), of `path` or of any file."""
        return [r for r in list(self.requests) if r.method == "GET" and r.file and path in (None, r.file)]

    # ----- life cycle -----
    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._hub.server_address[1]}"

    @property
    def cdn(self) -> str:
        return f"http://127.0.0.1:{self._cdn.server_address[1]}"

    def __enter__(self):
        self._hub = _serve(self, "hub")
        self._cdn = _serve(self, "cdn")
        return self

    def __exit__(self, *exc):
        self.release()
        for server in (self._hub, self._cdn):
            server.shutdown()
            server.server_close()

    # ----- request handling (called from the handler threads) -----
    def _take_switch(self, path: str) -> tuple[str, float] | None:
        with self._lock:
            if path in self._stall:
                self._stall.discard(path)
                return "stall", 0.5
            times, keep = self._cut.get(path, (0, 0.5))
            if times > 0:
                self._cut[path] = (times - 1, keep)
                return "cut", keep
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hung up is a test's doing
            super().handle_error(request, client_address)


def _serve(hub: HubServer, role: str) -> ThreadingHTTPServer:
    handler = type(f"{role}Handler", (_Handler,), {"hub": hub, "role": role})
    server = _Server(("127.0.0.1", 0), handler)  # loopback only, a free port
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: HubServer
    role: str

    def log_message(self, format, *args):  # quiet: the tests read hub.requests instead
        pass

    def do_HEAD(self):
        self._handle(head=True)

    def do_GET(self):
        self._handle(head=False)

    # ----- routing -----
    def _handle(self, head: bool) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.record = Request(self.role, self.command, self.path, headers)
        with self.hub._lock:
            self.hub.requests.append(self.record)
        url = urlsplit(self.path)
        if self.role == "cdn":
            match = CDN.match(url.path)
            data = self.hub.blobs.get(match["sha256"]) if match else None
            if data is None:
                return self._error(404, "EntryNotFound", "blob not found")
            name = self._name_of_blob(match["sha256"])
            return self._content(data, head, name, {})
        token = headers.get("authorization", "").removeprefix("Bearer ").strip() or None
        if token is not None and token not in self.hub.tokens:
            return self._error(401, None, "Invalid credentials in Authorization header")
        if match := API.match(url.path):
            return self._api(match, token, parse_qs(url.query), head)
        if match := RESOLVE.match(url.path):
            return self._resolve(match, token, head)
        self._error(404, None, "Not found")

    def _repo_at(self, match, token: str | None):
        """(repo, commit sha) for the request's repo and revision, or None once the error is sent."""
        repo = self.hub.repos.get(match["repo"])
        if repo is None:
            # the Hub answers 401 to anonymous callers so it does not reveal which private repos exist
            self._error(401 if token is None else 404, "RepoNotFound", "Repository not found")
            return None
        rev = unquote(match["rev"])
        sha = repo.commit(rev)
        if sha is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return None
        return repo, sha

    def _api(self, match, token, query, head) -> None:
        found = self._repo_at(match, token)
        if found is None:
            return
        repo, sha = found
        files = repo.revisions[sha]
        sizes = {path: repo.declared_sizes.get(path, len(data)) for path, data in files.items()}
        if match["kind"] == "revision":
            blobs = query.get("blobs", ["False"])[0].lower() == "true"
            siblings = []
            for path, data in files.items():
                sibling = {"rfilename": path}
                if blobs:
                    sibling.update(size=sizes[path], blobId=git_blob_sha1(data))
                    if is_lfs(path):
                        sibling["lfs"] = {
                            "size": sizes[path],
                            "sha256": hashlib.sha256(data).hexdigest(),
                            "pointerSize": 134,
                        }
                siblings.append(sibling)
            body = {
                "_id": "0" * 24,
                "id": match["repo"],
                "modelId": match["repo"],
                "sha": sha,
                "private": False,
                "gated": "manual" if repo.gated else False,
                "disabled": False,
                "siblings": siblings,
            }
        else:
            entries, folders = [], set()
            for path, data in sorted(files.items()):
                parts = path.split("/")
                for depth in range(1, len(parts)):
                    folders.add("/".join(parts[:depth]))
                entry = {"type": "file", "oid": git_blob_sha1(data), "size": sizes[path], "path": path}
                if is_lfs(path):
                    entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": sizes[path], "pointerSize": 134}
                entries.append(entry)
            entries += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": path} for path in sorted(folders)]
            body = entries
        self._json(200, body, head)

    def _resolve(self, match, token, head) -> None:
        found = self._repo_at(match, token)
        if found is None:
            return
        repo, sha = found
        rev = unquote(match["rev"])
        if repo.gated and token not in repo.tokens:
            message = f"Access to model {match['repo']} is restricted"
            return self._error(401 if token is None else 403, "GatedRepo", message, sha)
        path = unquote(match["path"])
        data = repo.revisions[sha].get(path)
        if data is None:
            return self._error(404, "EntryNotFound", f"{path} does not exist on {rev}", sha)
        extra = {"X-Repo-Commit": sha}
        if is_lfs(path):
            digest = hashlib.sha256(data).hexdigest()
            self.send_response(302)
            self.send_header("Location", f"{self.hub.cdn}/cdn/{digest}")
            self.send_header("X-Repo-Commit", sha)
            self.send_header("X-Linked-Etag", f'"{digest}"')
            self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("ETag", f'"{git_blob_sha1(data)}"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        extra["ETag"] = f'"{git_blob_sha1(data)}"'
        self._content(data, head, path, extra)

    def _name_of_blob(self, digest: str) -> str:
        for repo in self.hub.repos.values():
            for files in repo.revisions.values():
                for path, data in files.items():
                    if hashlib.sha256(data).hexdigest() == digest:
                        return path
        return digest

    # ----- responses -----
    def _content(self, data: bytes, head: bool, name: str, extra: dict[str, str]) -> None:
        start, end, status = 0, len(data), 200
        wanted = RANGE.match(self.headers.get("Range", ""))
        if wanted:
            start = int(wanted[1])
            end = int(wanted[2]) + 1 if wanted[2] else len(data)
            if start >= len(data):
                return self._error(416, None, "Range Not Satisfiable")
            status = 206
        body = data[start:end]
        self.record.file = name
        self.send_response(status)
        for key, value in extra.items():
            self.send_header(key, value)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        if head:
            return
        switch = self.hub._take_switch(name)
        if switch is None:
            self.wfile.write(body)
            return
        kind, keep = switch
        self.wfile.write(body[: int(len(body) * keep)])
        self.wfile.flush()
        if kind == "stall":
            self.hub.stalled.set()
            self.hub._release.wait(timeout=60)
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _json(self, status: int, body, head: bool) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if not head:
            self.wfile.write(payload)

    def _error(self, status: int, code: str | None, message: str, sha: str | None = None) -> None:
        payload = json.dumps({"error": message}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if sha:
            self.send_header("X-Repo-Commit", sha)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
