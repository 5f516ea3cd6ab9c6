"""A loopback test double of the Hugging Face Hub HTTP API.

The real ``huggingface_hub`` client talks to :class:`HubDouble` over HTTP on
127.0.0.1 (point ``constants.ENDPOINT`` at :attr:`HubDouble.url`).  It serves
what publishing and loading back need: repo creation, repo info, tree
listing, README metadata validation, branch creation, preupload (regular or
LFS mode), the LFS batch API with basic transfer (PUT + verify), NDJSON
commits (with ``parentCommit`` checks), and the ``resolve`` download
endpoint (HEAD and GET with ``X-Repo-Commit``, ``ETag``,
``X-Linked-Etag``/``X-Linked-Size`` and ``Content-Length``).

State is in memory and every commit is a full snapshot, so "the repo is
unchanged" is a comparison of head commits.  Access control follows the
Hub: a token maps to a user, a user may write only to its own namespace,
private repos are invisible to everyone else.  Failures can be injected
into LFS uploads and commits.  The client must not use Xet for LFS files
(set ``constants.HF_HUB_DISABLE_XET``): the double has no Xet storage.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

# Write tokens of the two test users ("alice" and "bob").
TOKEN = "hf_aliceWriteToken0123456789abcdefXYZ"
BOB_TOKEN = "hf_bobWriteToken0123456789abcdefXYZ"

# Like the default .gitattributes of a new Hub repo: binary formats go to LFS.
LFS_SUFFIXES = (".safetensors", ".parquet", ".png", ".bin", ".pt", ".pkl", ".npy")
LFS_MIN_SIZE = 10 * 1024 * 1024
GITATTRIBUTES = b"".join(
    f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n".encode()
    for suffix in LFS_SUFFIXES
)


def git_blob_oid(data: bytes) -> str:
    """Git's object id of a blob: sha1 over a ``blob <size>\\0`` header and the data."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class Blob:
    """A file's content and whether the repo stores it in LFS."""

    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        """Hex sha256 of the content (the LFS object id)."""
        return hashlib.sha256(self.data).hexdigest()

    @property
    def etag(self) -> str:
        """The ETag the Hub serves: sha256 for LFS files, the git oid otherwise."""
        return self.sha256 if self.lfs else git_blob_oid(self.data)


@dataclass
class Commit:
    """A full snapshot of a repo's files."""

    oid: str
    parent: str | None
    message: str
    files: dict[str, Blob]


@dataclass
class Repo:
    """One model repo: owner, visibility, branches and commits."""

    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    @property
    def owner(self) -> str:
        """The namespace the repo lives in."""
        return self.repo_id.split("/")[0]


class HubError(Exception):
    """An HTTP error answer: status, Hub error code and message."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        *,
        extra: dict | None = None,
        **headers,
    ):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.extra = extra or {}
        self.headers = headers


REPO = r"(?P<repo>[^/]+/[^/]+)"
ROUTES = [
    ("POST", r"^/api/repos/create$", "create_repo"),
    ("POST", r"^/api/validate-yaml$", "validate_yaml"),
    ("GET", rf"^/api/models/{REPO}(?:/revision/(?P<rev>[^/]+))?$", "repo_info"),
    ("GET", rf"^/api/models/{REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?$", "tree"),
    ("POST", rf"^/api/models/{REPO}/preupload/(?P<rev>[^/]+)$", "preupload"),
    ("POST", rf"^/api/models/{REPO}/commit/(?P<rev>[^/]+)$", "commit"),
    ("POST", rf"^/api/models/{REPO}/branch/(?P<branch>[^/]+)$", "create_branch"),
    ("POST", rf"^/{REPO}\.git/info/lfs/objects/batch$", "lfs_batch"),
    ("PUT", r"^/_lfs/(?P<oid>[0-9a-f]{64})$", "lfs_put"),
    ("POST", r"^/_lfs/verify$", "lfs_verify"),
    ("GET", rf"^/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$", "resolve"),
    ("HEAD", rf"^/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$", "resolve"),
]


class HubDouble:
    """An in-memory Hub served over HTTP on 127.0.0.1 from a background thread.

    ``tokens`` maps access tokens to user names.  ``lfs`` chooses how
    preupload answers binary files: ``True`` sends them through the LFS batch
    API (as the real Hub does), ``False`` uploads everything inline.
    Inject failures with :attr:`fail_lfs_uploads_after` (that many LFS
    PUTs succeed, later ones get 403), :attr:`fail_commits` (commits get
    500) and :attr:`lose_commit_responses` (commits are made, but answered 502
    as if the response was lost).
    """

    def __init__(self, tokens: dict[str, str], *, lfs: bool = True):
        self.tokens = dict(tokens)
        self.lfs = lfs
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.fail_lfs_uploads_after: int | None = None
        self.fail_commits = False
        self.lose_commit_responses = False
        self._lfs_puts = 0
        self._lock = threading.RLock()
        self._oids = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        """Base URL of the running server (``http://127.0.0.1:<port>``)."""
        if self._server is None:
            raise RuntimeError("HubDouble is not running; call start()")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubDouble:
        """Start serving on a free loopback port."""
        handler = type("Handler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the server and wait for its thread."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> HubDouble:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------ test helpers
    def add_repo(self, repo_id: str, *, private: bool = False) -> Repo:
        """Create a repo with the Hub's initial ``.gitattributes`` commit."""
        with self._lock:
            repo = Repo(repo_id, private)
            self.repos[repo_id] = repo
            files = {".gitattributes": Blob(GITATTRIBUTES, lfs=False)}
            self._new_commit(repo, "main", None, "initial commit", files)
            return repo

    def head(self, repo_id: str, branch: str = "main") -> str:
        """The commit id a branch points to."""
        return self.repos[repo_id].branches[branch]

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """Path -> content of every file at a revision."""
        repo = self.repos[repo_id]
        commit = repo.commits[repo.branches.get(revision, revision)]
        return {path: blob.data for path, blob in commit.files.items()}

    def commit_count(self, repo_id: str) -> int:
        """Number of commits in a repo, the initial one included."""
        return len(self.repos[repo_id].commits)

    def commit_files(
        self, repo_id: str, files: dict[str, bytes], message: str = "test"
    ) -> str:
        """Commit files directly (bypassing HTTP), e.g. another run's folder."""
        with self._lock:
            repo = self.repos[repo_id]
            parent = repo.branches["main"]
            snapshot = dict(repo.commits[parent].files)
            for path, data in files.items():
                snapshot[path] = Blob(data, lfs=self._is_lfs(path, len(data)))
            return self._new_commit(repo, "main", parent, message, snapshot)

    # ------------------------------------------------------------ internals
    def _new_commit(self, repo, branch, parent, message, files) -> str:
        oid = hashlib.sha1(f"{repo.repo_id}:{next(self._oids)}".encode()).hexdigest()
        repo.commits[oid] = Commit(oid, parent, message, files)
        repo.branches[branch] = oid
        return oid

    def _is_lfs(self, path: str, size: int) -> bool:
        return self.lfs and (path.endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE)

    def _user(self, headers) -> str | None:
        auth = headers.get("Authorization", "")
        if not auth:
            return None
        token = auth.removeprefix("Bearer ").strip()
        if token not in self.tokens:
            raise HubError(
                401,
                "Invalid credentials in Authorization header",
                **{"X-Error-Message": "Invalid credentials in Authorization header"},
            )
        return self.tokens[token]

    def _readable(self, repo_id: str, user: str | None) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and user != repo.owner):
            raise HubError(
                401 if user is None else 404,
                "Repository not found",
                "RepoNotFound",
                **{"X-Error-Message": "Repository not found"},
            )
        return repo

    def _writable(self, repo_id: str, user: str | None) -> Repo:
        if user is None:
            raise HubError(401, "You must be authenticated to write to a repo")
        repo = self._readable(repo_id, user)
        if user != repo.owner:
            raise HubError(403, f"You don't have the rights to write to {repo_id}")
        return repo

    @staticmethod
    def _commit_at(repo: Repo, revision: str) -> Commit:
        oid = repo.branches.get(revision, revision)
        if oid not in repo.commits:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo.commits[oid]

    # ------------------------------------------------------------- routes
    def create_repo(self, user, body, **_):
        if user is None:
            raise HubError(401, "You must be authenticated to create a repo")
        payload = json.loads(body)
        namespace = payload.get("organization") or user
        repo_id = f"{namespace}/{payload['name']}"
        if namespace != user:
            raise HubError(403, f"You don't have the rights to create {repo_id}")
        if repo_id in self.repos:
            raise HubError(
                409,
                "You already created this model repo",
                extra={"url": f"{self.url}/{repo_id}"},
            )
        private = payload.get("visibility", "public") == "private" or bool(
            payload.get("private")
        )
        self.add_repo(repo_id, private=private)
        return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id}, {}

    def validate_yaml(self, body, **_):
        content = json.loads(body)["content"]
        match = re.match(r"^---\n(.*?)\n---\n", content, re.S)
        if match is None:
            return (
                200,
                {"warnings": [{"message": "empty or missing yaml metadata"}]},
                {},
            )
        try:
            metadata = yaml.safe_load(match.group(1))
        except yaml.YAMLError as exc:
            return 400, {"errors": [{"message": f"invalid YAML: {exc}"}]}, {}
        errors = metadata_errors(metadata)
        if errors:
            return 400, {"errors": [{"message": e} for e in errors]}, {}
        return 200, {"warnings": []}, {}

    def repo_info(self, user, repo, rev=None, **_):
        found = self._readable(repo, user)
        commit = self._commit_at(found, rev or "main")
        return (
            200,
            {
                "id": repo,
                "modelId": repo,
                "author": found.owner,
                "sha": commit.oid,
                "private": found.private,
                "siblings": [{"rfilename": p} for p in sorted(commit.files)],
            },
            {},
        )

    def tree(self, user, repo, rev, query, path=None, **_):
        commit = self._commit_at(self._readable(repo, user), rev)
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        base = f"{path.strip('/')}/" if path else ""
        if path and not any(p.startswith(base) for p in commit.files):
            raise HubError(404, f"{path} does not exist", "EntryNotFound")
        entries, folders = [], set()
        for name, blob in sorted(commit.files.items()):
            if not name.startswith(base):
                continue
            rest = name[len(base) :].split("/")
            if len(rest) > 1 and not recursive:
                folders.add(base + rest[0])
                continue
            for depth in range(1, len(rest)):
                folders.add(base + "/".join(rest[:depth]))
            entry = {
                "type": "file",
                "oid": git_blob_oid(blob.data),
                "size": len(blob.data),
                "path": name,
            }
            if blob.lfs:
                entry["lfs"] = {
                    "oid": blob.sha256,
                    "size": len(blob.data),
                    "pointerSize": 134,
                }
            entries.append(entry)
        entries += [
            {"type": "directory", "oid": "0" * 40, "size": 0, "path": f}
            for f in sorted(folders)
        ]
        return 200, entries, {}

    def create_branch(self, user, repo, branch, body, **_):
        found = self._writable(repo, user)
        if branch in found.branches:
            raise HubError(409, f"Branch {branch} already exists")
        start = json.loads(body or b"{}").get("startingPoint") or "main"
        found.branches[branch] = self._commit_at(found, start).oid
        return 200, {}, {}

    def preupload(self, user, repo, rev, body, **_):
        commit = self._commit_at(self._writable(repo, user), rev)
        answers = []
        for item in json.loads(body)["files"]:
            path, size = item["path"], item["size"]
            lfs = self._is_lfs(path, size)
            existing = commit.files.get(path)
            oid = None
            if existing is not None:
                oid = existing.sha256 if existing.lfs else git_blob_oid(existing.data)
            answers.append(
                {
                    "path": path,
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": oid,
                }
            )
        return 200, {"files": answers, "commitOid": commit.oid}, {}

    def lfs_batch(self, user, repo, body, **_):
        self._writable(repo, user)
        payload = json.loads(body)
        if "basic" not in payload.get("transfers", ["basic"]):
            raise HubError(422, "only the basic LFS transfer is supported")
        objects = []
        for obj in payload["objects"]:
            answer = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.lfs_objects:
                answer["actions"] = {
                    "upload": {"href": f"{self.url}/_lfs/{obj['oid']}"},
                    "verify": {"href": f"{self.url}/_lfs/verify"},
                }
            objects.append(answer)
        return 200, {"transfer": "basic", "objects": objects}, {}

    def lfs_put(self, oid, body, **_):
        limit = self.fail_lfs_uploads_after
        if limit is not None and self._lfs_puts >= limit:
            raise HubError(403, "injected failure: storage refused the upload")
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, "uploaded content does not match its oid")
        self._lfs_puts += 1
        self.lfs_objects[oid] = body
        return 200, {}, {}

    def lfs_verify(self, user, body, **_):
        if user is None:
            raise HubError(401, "You must be authenticated")
        payload = json.loads(body)
        stored = self.lfs_objects.get(payload["oid"])
        if stored is None or len(stored) != payload["size"]:
            raise HubError(404, "object not found")
        return 200, {}, {}

    def commit(self, user, repo, rev, body, **_):
        found = self._writable(repo, user)
        if self.fail_commits:
            raise HubError(500, "injected failure: commit refused")
        if rev not in found.branches:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        lines = [json.loads(line) for line in body.decode().splitlines() if line]
        header = lines[0]["value"]
        parent = found.branches[rev]
        if header.get("parentCommit") not in (None, parent):
            raise HubError(
                412, "A commit has happened since. Please refresh and try again."
            )
        files = dict(found.commits[parent].files)
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            path = value["path"]
            if key == "file":
                data = base64.b64decode(value["content"])
                files[path] = Blob(data, lfs=False)
            elif key == "lfsFile":
                data = self.lfs_objects.get(value["oid"])
                if data is None:
                    raise HubError(422, f"LFS object {value['oid']} was never uploaded")
                files[path] = Blob(data, lfs=True)
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    raise HubError(
                        404, "A file with this name doesn't exist", "EntryNotFound"
                    )
            elif key == "deletedFolder":
                prefix = path.rstrip("/") + "/"
                for name in [n for n in files if n.startswith(prefix)]:
                    del files[name]
            else:
                raise HubError(400, f"unknown commit operation {key!r}")
        oid = self._new_commit(found, rev, parent, header["summary"], files)
        if self.lose_commit_responses:
            raise HubError(502, "injected failure: the commit's response was lost")
        url = f"{self.url}/{repo}/commit/{oid}"
        return 200, {"success": True, "commitOid": oid, "commitUrl": url}, {}

    def resolve(self, user, repo, rev, path, method, **_):
        commit = self._commit_at(self._readable(repo, user), rev)
        headers = {"X-Repo-Commit": commit.oid}
        blob = commit.files.get(path)
        if blob is None:
            raise HubError(404, "Entry not found", "EntryNotFound", **headers)
        headers["ETag"] = f'"{blob.etag}"'
        if blob.lfs:
            headers["X-Linked-Etag"] = f'"{blob.sha256}"'
            headers["X-Linked-Size"] = str(len(blob.data))
        return 200, blob.data, headers


def metadata_errors(metadata) -> list[str]:
    """A few of the checks the Hub makes on model card metadata."""
    if not isinstance(metadata, dict):
        return ["metadata must be a YAML mapping"]
    errors = []
    tags = metadata.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        errors.append('"tags" must be a list of strings')
    if "library_name" in metadata and not isinstance(metadata["library_name"], str):
        errors.append('"library_name" must be a string')
    base = metadata.get("base_model")
    bases = base if isinstance(base, list) else [base] if base is not None else []
    for item in bases:
        if not isinstance(item, str) or not re.fullmatch(r"[\w.-]+/[\w.-]+", item):
            errors.append(f'"base_model" must be a Hub model id, got {item!r}')
    return errors


class _Handler(BaseHTTPRequestHandler):
    hub: HubDouble
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def log_message(self, *args):  # keep test output quiet
        pass

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        body = self._read_body()
        self.hub.requests.append((method, split.path))
        status, payload, headers = 404, {"error": "no such route"}, {}
        try:
            for verb, pattern, name in ROUTES:
                match = re.match(pattern, split.path) if verb == method else None
                if match is None:
                    continue
                args = {k: unquote(v) for k, v in match.groupdict().items() if v}
                with self.hub._lock:
                    user = self.hub._user(self.headers)
                    status, payload, headers = getattr(self.hub, name)(
                        user=user,
                        body=body,
                        query=parse_qs(split.query),
                        method=method,
                        **args,
                    )
                break
        except HubError as err:
            status, payload = err.status, {"error": err.message, **err.extra}
            headers = dict(err.headers)
            if err.code:
                headers["X-Error-Code"] = err.code
        self._send(method, status, payload, headers)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                chunk = self.rfile.read(size)
                self.rfile.readline()
                if size == 0:
                    return b"".join(chunks)
                chunks.append(chunk)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, method, status, payload, headers) -> None:
        if isinstance(payload, bytes):
            data, content_type = payload, "application/octet-stream"
        else:
            data, content_type = json.dumps(payload).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(data)
