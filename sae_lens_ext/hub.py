"""Publish a run directory to the Hugging Face Hub in one commit.

``push_to_hub(run_dir, repo_id)`` checks everything it can before touching
the network (repo id, folder prefix, file types and contents, SAE folders,
token), hashes every file, lists what the repo already holds and then makes
at most one commit: new or changed files are added, files of this run's
folders that the run no longer has are deleted, identical content makes no
commit at all.  The Hub applies a commit atomically, so a failure anywhere
leaves the repo as it was; the error says how to retry.

The token comes from the argument, ``HF_TOKEN`` or the huggingface_hub
login, and is only ever handed to the ``huggingface_hub`` client: it is
never logged, printed, written to a file, or put in an error message.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shlex
import sys
import warnings
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .model_card import fill_repo_id, relocate_images, render_model_card

logger = logging.getLogger(__name__)

ALLOWED_SUFFIXES = (".safetensors", ".json", ".parquet", ".csv", ".png", ".md")
SAE_CONFIG = "cfg.json"
SAE_WEIGHTS = "sae_weights.safetensors"
CARD = "README.md"
SUMMARY = "summary.json"
_CHUNK = 1 << 20
_PREFIX_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PARQUET_MAGIC = b"PAR1"


class PublishError(RuntimeError):
    """A push could not reach or update the Hub; the message says how to fix or retry."""


@dataclass(frozen=True)
class LocalFile:
    """One file to publish: its place in the repo, its content and hashes."""

    path_in_repo: str
    source: Path | bytes
    size: int
    sha256: str
    git_oid: str


@dataclass
class PushResult:
    """What a push did; ``str(result)`` is the URL of the run in the repo."""

    repo_id: str
    url: str
    commit: str | None
    uploaded: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return self.url


def push_to_hub(
    run_dir: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    prefix: str | None = None,
    allow_incomplete: bool = False,
) -> PushResult:
    """Publish a run directory to a Hugging Face model repo in one commit.

    Every SAE folder lands in SAE-Lens layout, so
    ``SAE.from_pretrained(repo_id, "<prefix>/<analysis>/<sae>")`` loads it.
    ``prefix`` puts the run in a folder of the repo (several runs can share
    a repo); a re-push replaces only that folder.  ``private`` creates the
    repo private and refuses to publish into an existing public one.
    ``revision`` is the branch to push to (created from ``main`` if
    missing).  A run whose status is not ``complete`` (failed or
    interrupted) is refused unless ``allow_incomplete``; one still running
    always is.  Returns a :class:`PushResult` whose ``commit`` is None when
    the repo already held identical content.
    """
    folder = check_push_options(repo_id, prefix, revision)
    run_dir = Path(run_dir)
    summary, files = checked_run(run_dir, allow_incomplete)
    check_online()
    token = resolve_token(token)
    card = card_text(run_dir, summary, repo_id, folder)
    local = prepare_files(run_dir, files, card, folder, token)
    message = commit_message or default_commit_message(run_dir, summary, folder)
    retry = retry_command(run_dir, repo_id, folder, revision, private)
    with hub_errors(run_dir, repo_id, retry, token):
        return _push(local, card, repo_id, folder, token, private, revision, message)


def _push(local, card, repo_id, folder, token, private, revision, message):
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=True if private else None, exist_ok=True)
    head, remote, is_private, branch_exists = remote_state(api, repo_id, revision)
    if private and not is_private:
        raise PublishError(
            f"{repo_id} already exists and is public, but a private push was asked "
            "for. Make the repo private on the Hub (or with "
            "HfApi().update_repo_settings(repo_id, private=True)) and push again, "
            "or push without --private."
        )
    if folder and CARD not in remote:
        # the repo's card: the run's, with its images under the run's folder
        root_card = relocate_images(card, folder)
        local = [*local, hashed_bytes(CARD, root_card.encode())]
    adds, unchanged = changed_files(local, remote)
    deletes = stale_files(local, remote, folder)
    url = run_url(api.endpoint, repo_id, revision, folder)
    if not adds and not deletes:
        logger.info(
            "%s already holds this run (%d files); no commit", repo_id, len(local)
        )
        return PushResult(repo_id, url, None, unchanged=unchanged)
    logger.info(
        "pushing to %s: %d to upload, %d unchanged, %d to delete",
        repo_id,
        len(adds),
        len(unchanged),
        len(deletes),
    )
    if revision is not None and not branch_exists:
        api.create_branch(repo_id, branch=revision, revision=head, exist_ok=True)
    operations = [
        CommitOperationAdd(
            path_in_repo=f.path_in_repo,
            path_or_fileobj=f.source if isinstance(f.source, bytes) else str(f.source),
        )
        for f in adds
    ] + [CommitOperationDelete(path_in_repo=path) for path in deletes]
    try:
        with warnings.catch_warnings():
            # Tables are parquet on purpose: they belong with the SAEs they describe.
            warnings.filterwarnings("ignore", message=".*about to commit a data file")
            oid = api.create_commit(
                repo_id,
                operations,
                commit_message=message,
                revision=revision,
                parent_commit=head,
            ).oid
    except Exception as exc:
        oid = commit_that_landed(api, repo_id, revision, head, local, folder, exc)
        logger.warning(
            "the Hub's answer to the commit was an error, but %s now holds this "
            "run at commit %s: the commit was made",
            repo_id,
            oid,
        )
    return PushResult(
        repo_id,
        url,
        oid,
        uploaded=[f.path_in_repo for f in adds],
        deleted=deletes,
        unchanged=unchanged,
    )


def commit_that_landed(api, repo_id, revision, head, local, folder, error) -> str:
    """After a failed commit call, the new head if it holds this run; else raise.

    A commit whose response was lost may still have been made, so the
    remote head is read again before anyone is told nothing was committed.
    """
    try:
        new_head, remote, _, _ = remote_state(api, repo_id, revision)
    except Exception as reread:
        raise PublishError(
            f"the commit to {repo_id} failed ({redact(repr(error), api.token)}) and "
            f"the repo could not be read back ({type(reread).__name__}), so it is "
            "unknown whether the commit was made. Look at the repo on the Hub; "
            "running the same push again is safe (identical content makes no commit)."
        ) from error
    if new_head == head:
        raise error
    adds, _ = changed_files(local, remote)
    if adds or stale_files(local, remote, folder):
        raise PublishError(
            f"the commit to {repo_id} failed ({redact(repr(error), api.token)}) and "
            f"the branch moved meanwhile (now at {new_head}) without this run: "
            "someone else committed. Run the same push again to publish on top."
        ) from error
    return new_head


def check_push_options(repo_id: str, prefix: str | None, revision: str | None) -> str:
    """Check a push's repo id, prefix and revision before any work; the folder.

    Shared by :func:`push_to_hub` and :func:`~sae_lens_ext.sweep_hub.push_sweep`.
    """
    check_repo_id(repo_id)
    folder = normalize_prefix(prefix)
    if revision is not None and (not isinstance(revision, str) or not revision):
        raise ValueError(
            "revision must be a branch name such as 'main' (--revision), or None"
        )
    return folder


def check_repo_id(repo_id: str) -> None:
    """Refuse repo ids the Hub would refuse, before any network call."""
    if not isinstance(repo_id, str):
        raise TypeError(f"repo_id must be a string like 'user/name', not {repo_id!r}")
    fix = (
        "a repo id is '<user or organisation>/<name>' with letters, digits, "
        "'-', '_' and '.', e.g. 'alice/gpt2-sae-analyses'"
    )
    if not _REPO_ID.match(repo_id):
        raise ValueError(f"malformed repo id {repo_id!r}: {fix}")
    name = repo_id.split("/")[1]
    if "--" in repo_id or ".." in repo_id or name.endswith((".git", "-", ".")):
        raise ValueError(
            f"malformed repo id {repo_id!r} ('--', '..' or a bad ending): {fix}"
        )
    if len(name) > 96:
        raise ValueError(
            f"malformed repo id {repo_id!r}: the name is over 96 characters"
        )


def normalize_prefix(prefix: str | None) -> str:
    """The run's folder in the repo as ``a/b`` ('' for the repo root)."""
    if prefix is None:
        return ""
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a folder path string, not {prefix!r}")
    parts = [p for p in prefix.strip().strip("/").split("/") if p]
    bad = [p for p in parts if not _PREFIX_PART.match(p) or ".." in p]
    if bad:
        raise ValueError(
            f"bad prefix {prefix!r}: each folder name must start with a letter or "
            "digit and use only letters, digits, '-', '_' and '.' (e.g. 'runs/mdl-1')"
        )
    return "/".join(parts)


def checked_run(run_dir: Path, allow_incomplete: bool) -> tuple[dict, dict[str, Path]]:
    """A run's summary and files to publish, after every check a push makes."""
    summary = read_summary(run_dir, allow_incomplete)
    files = collect_files(run_dir)
    check_sae_folders(run_dir, summary, files)
    return summary, files


def read_summary(run_dir: Path, allow_incomplete: bool = False) -> dict:
    """The run's ``summary.json``; a run still in progress is refused.

    A failed or interrupted run is refused too unless ``allow_incomplete``.
    """
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir} is not a directory; pass the run directory")
    path = run_dir / SUMMARY
    if not path.is_file():
        raise ValueError(
            f"{run_dir} has no {SUMMARY}, so it is not a sae-lens-ext run directory; "
            "pass the folder `sae-lens-ext run` wrote"
        )
    try:
        summary = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); re-run the run") from exc
    if not isinstance(summary, dict):
        raise ValueError(f"{path} must hold a JSON object")
    if summary.get("status") == "running":
        raise ValueError(
            f"{path} says the run is still running; wait for it to finish "
            "(if its process died, run it again) and then push"
        )
    status = summary.get("status")
    if status != "complete" and not allow_incomplete:
        raise ValueError(
            f"{path} says the run is {status or 'of unknown status'}, not complete, "
            "so some analyses are missing or failed; re-run it, or pass "
            "--allow-incomplete (allow_incomplete=True) to publish it as it is"
        )
    return summary


def collect_files(run_dir: Path) -> dict[str, Path]:
    """Every file of the run by repo-relative path; refuse anything not publishable.

    Only safetensors, JSON, parquet, CSV, PNG and Markdown go up, and each
    file's content must match its type (a pickle renamed ``.safetensors``
    is refused).  Symbolic links are refused too.
    """
    files, problems = {}, []
    for path in sorted(run_dir.rglob("*")):
        rel = path.relative_to(run_dir).as_posix()
        if path.is_symlink():
            problems.append(f"{rel} (a symbolic link; copy the file in instead)")
        elif path.is_file():
            problem = content_problem(path)
            if problem:
                problems.append(f"{rel} ({problem})")
            else:
                files[rel] = path
    if problems:
        raise ValueError(
            f"refusing to publish {run_dir}: only "
            f"{', '.join(ALLOWED_SUFFIXES)} files with matching content may go to "
            "the Hub (never pickle). Remove or convert these files and push "
            "again:\n  " + "\n  ".join(problems)
        )
    return files


def content_problem(path: Path) -> str | None:
    """Why a file may not be published, or None if it may."""
    suffix = path.suffix.lower()
    if suffix not in ALLOWED_SUFFIXES:
        kind = (
            "pickle"
            if suffix in (".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt")
            else "type"
        )
        return f"{suffix or 'no extension'}: {kind} files are not published"
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(16)
        if suffix == ".safetensors":
            return _safetensors_problem(f, head, size)
        if suffix == ".png":
            return None if head.startswith(_PNG_MAGIC) else "not a PNG image"
        if suffix == ".parquet":
            f.seek(max(size - 4, 0))
            ok = head.startswith(_PARQUET_MAGIC) and f.read(4) == _PARQUET_MAGIC
            return None if ok and size >= 8 else "not a parquet file"
        f.seek(0)
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "not UTF-8 text"
    if "\0" in text:
        return "binary content in a text file"
    if suffix == ".json":
        try:
            json.loads(text)
        except json.JSONDecodeError:
            return "not valid JSON"
    return None


def _safetensors_problem(f, head: bytes, size: int) -> str | None:
    header_len = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
    if not 2 <= header_len <= size - 8 or head[8:9] != b"{":
        return "not a safetensors file"
    f.seek(8)
    try:
        json.loads(f.read(header_len))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "not a safetensors file (bad header)"
    return None


def check_sae_folders(run_dir: Path, summary: dict, files: dict[str, Path]) -> None:
    """Make sure every SAE folder loads with ``SAE.from_pretrained`` once published."""
    listed = {
        str(folder).strip("/")
        for entry in summary.get("analyses", {}).values()
        for folder in entry.get("saes", [])
    }
    found = {
        rel.rpartition("/")[0] for rel in files if rel.rpartition("/")[2] == SAE_WEIGHTS
    }
    problems = []
    for folder in sorted(listed | found):
        where = f"{folder}/" if folder else ""
        missing = [n for n in (SAE_CONFIG, SAE_WEIGHTS) if f"{where}{n}" not in files]
        if missing:
            problems.append(f"{folder or '.'} lacks {' and '.join(missing)}")
            continue
        cfg = json.loads(files[f"{where}{SAE_CONFIG}"].read_text())
        metadata = cfg.get("metadata") if isinstance(cfg, dict) else None
        if not isinstance(metadata, dict) or "sae_lens_version" not in metadata:
            problems.append(
                f"{folder}/{SAE_CONFIG} has no metadata.sae_lens_version (SAE-Lens "
                "would load it as a legacy config and drop hook_name)"
            )
        elif "architecture" not in cfg:
            problems.append(f"{folder}/{SAE_CONFIG} names no architecture")
    if problems:
        raise ValueError(
            f"{run_dir} has SAE folders SAE-Lens could not load back; re-save each "
            "SAE with sae.save_model(folder) (SAE-Lens >= 6):\n  "
            + "\n  ".join(problems)
        )


def check_online() -> None:
    """Refuse to start when huggingface_hub is in offline mode."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        raise PublishError(
            "huggingface_hub is in offline mode (HF_HUB_OFFLINE is set); publishing "
            "needs the network: unset HF_HUB_OFFLINE and push again"
        )


def resolve_token(token: str | None) -> str:
    """The token from the argument, ``HF_TOKEN`` or the huggingface_hub login."""
    if token is not None and not isinstance(token, str):
        raise TypeError("token must be a string (or None to use HF_TOKEN or the login)")
    if not token:
        from huggingface_hub import get_token

        token = get_token()
    if not token:
        raise PublishError(
            "no Hugging Face token: pass token=..., set the HF_TOKEN environment "
            "variable, or log in once with `hf auth login`; the token needs write "
            "access to the repo's namespace"
        )
    return token


def card_text(run_dir: Path, summary: dict, repo_id: str, folder: str) -> str:
    """The model card to upload, with the real repo id in its load snippets."""
    path = run_dir / CARD
    text = path.read_text() if path.is_file() else render_model_card(summary, [])
    return fill_repo_id(text, repo_id, folder)


def prepare_files(
    run_dir: Path, files: dict[str, Path], card: str, folder: str, token: str
) -> list[LocalFile]:
    """Hash every file (the card from memory) and refuse any that holds the token."""
    prepared, leaking = [], []
    needle = token.encode()
    for rel, path in files.items():
        in_repo = f"{folder}/{rel}" if folder else rel
        if rel == CARD:
            entry = hashed_bytes(in_repo, card.encode())
            holds_token = needle in card.encode()
        else:
            entry, holds_token = hashed_file(in_repo, path, needle)
        prepared.append(entry)
        if holds_token:
            leaking.append(rel)
    if CARD not in files:
        prepared.append(
            hashed_bytes(f"{folder}/{CARD}" if folder else CARD, card.encode())
        )
    if leaking:
        raise ValueError(
            f"refusing to publish {run_dir}: these files contain your Hugging Face "
            "token; delete it from them (and rotate the token) before pushing:\n  "
            + "\n  ".join(leaking)
        )
    return prepared


def hashed_bytes(path_in_repo: str, data: bytes) -> LocalFile:
    """A file given as bytes, with its sha256 and git blob id."""
    git = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    sha = hashlib.sha256(data).hexdigest()
    return LocalFile(path_in_repo, data, len(data), sha, git)


def hashed_file(path_in_repo: str, path: Path, needle: bytes) -> tuple[LocalFile, bool]:
    """Hash a file in chunks; also say whether ``needle`` occurs in it."""
    size = path.stat().st_size
    sha, git = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size)
    found, tail = False, b""
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
            git.update(chunk)
            window = tail + chunk
            found = found or needle in window
            tail = window[-(len(needle) - 1) :] if len(needle) > 1 else b""
    entry = LocalFile(path_in_repo, path, size, sha.hexdigest(), git.hexdigest())
    return entry, found


def remote_state(api, repo_id: str, revision: str | None):
    """Head commit, ``{path: RepoFile}``, privacy and whether the branch exists."""
    from huggingface_hub.errors import RevisionNotFoundError
    from huggingface_hub.hf_api import RepoFile

    branch_exists = True
    try:
        info = api.repo_info(repo_id, revision=revision)
    except RevisionNotFoundError:
        if revision is None:
            raise
        branch_exists = False
        info = api.repo_info(repo_id)
    if info.sha is None:
        return None, {}, bool(info.private), branch_exists
    tree = api.list_repo_tree(repo_id, recursive=True, revision=info.sha)
    remote = {item.path: item for item in tree if isinstance(item, RepoFile)}
    return info.sha, remote, bool(info.private), branch_exists


def changed_files(
    local: list[LocalFile], remote: dict
) -> tuple[list[LocalFile], list[str]]:
    """Split local files into those to upload and those the repo already holds."""
    adds, same = [], []
    for f in local:
        theirs = remote.get(f.path_in_repo)
        if theirs is None:
            adds.append(f)
        elif theirs.lfs is not None and theirs.lfs.sha256 == f.sha256:
            same.append(f.path_in_repo)
        elif theirs.lfs is None and theirs.blob_id == f.git_oid:
            same.append(f.path_in_repo)
        else:
            adds.append(f)
    return adds, same


def stale_files(
    local: list[LocalFile], remote: Iterable[str], folder: str
) -> list[str]:
    """Remote files of this run's folders that the run no longer has.

    With a prefix the run owns everything under it.  At the repo root it
    owns the top-level folders it writes (one per analysis); other files
    (``.gitattributes``, other runs' prefixes) are never deleted.
    """
    ours = {f.path_in_repo for f in local}
    if folder:
        scopes = (f"{folder}/",)
    else:
        scopes = tuple(sorted({p.split("/")[0] + "/" for p in ours if "/" in p}))
    return (
        sorted(p for p in remote if p.startswith(scopes) and p not in ours)
        if scopes
        else []
    )


def run_url(endpoint: str, repo_id: str, revision: str | None, folder: str) -> str:
    """Web URL of the run's folder in the repo."""
    url = f"{endpoint}/{repo_id}"
    if folder or revision:
        url += f"/tree/{revision or 'main'}"
    return f"{url}/{folder}" if folder else url


def default_commit_message(run_dir: Path, summary: dict, folder: str) -> str:
    """``Publish sae-lens-ext run <name>: <release>/<sae_id> (<analyses>)``."""
    analyses = ", ".join(summary.get("analyses", {})) or "no analyses"
    source = f"{summary.get('release')}/{summary.get('sae_id')}"
    where = f" to {folder}/" if folder else ""
    return f"Publish sae-lens-ext run {run_dir.resolve().name}{where}: {source} ({analyses})"


@contextmanager
def hub_errors(run_dir: Path, repo_id: str, retry: str, token: str):
    """Turn client and HTTP failures into a :class:`PublishError` that says how to retry."""
    try:
        yield
    except Exception as exc:
        chain = exception_chain(exc)
        hub_failures = [e for e in chain if isinstance(e, _hub_error_types())]
        if isinstance(exc, PublishError) or not hub_failures:
            raise
        shown = [exc] if exc is hub_failures[0] else [exc, hub_failures[0]]
        detail = "; caused by ".join(f"{type(e).__name__}: {e}" for e in shown)
        responses = [getattr(e, "response", None) for e in hub_failures]
        status = next((r.status_code for r in responses if r is not None), None)
        raise PublishError(
            f"publishing {run_dir} to {repo_id} failed: {redact(detail, token)}\n"
            f"{_hint(status, repo_id)}Nothing was committed (a push is a single "
            "commit), so the repo is as it was. Fix the cause and run the same push "
            f"again, e.g. `{retry}`; files the Hub already received are not "
            "uploaded twice."
        ) from None


def retry_command(
    run_dir: Path, repo_id: str, folder: str, revision: str | None, private: bool
) -> str:
    """The ``sae-lens-ext push`` command line that repeats this push."""
    command = f"sae-lens-ext push {shlex.quote(str(run_dir))} {repo_id}"
    if folder:
        command += f" --prefix {folder}"
    if revision:
        command += f" --revision {shlex.quote(revision)}"
    return command + (" --private" if private else "")


def exception_chain(exc: BaseException) -> list[BaseException]:
    """An exception and its causes, outermost first."""
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def _hint(status: int | None, repo_id: str) -> str:
    namespace = repo_id.split("/")[0]
    if status in (401, 403):
        return (
            f"The Hub refused access: the token needs write access to '{namespace}' "
            "(check HF_TOKEN or `hf auth login`). "
        )
    if status == 412:
        return "Someone else committed to the branch meanwhile. "
    if status is not None and status >= 500:
        return "The Hub had a server error; it is usually temporary. "
    return ""


def _hub_error_types() -> tuple[type[BaseException], ...]:
    """OSError and ValueError (huggingface_hub's own), plus the HTTP library's errors."""
    types: list[type[BaseException]] = [OSError, ValueError]
    for name in ("httpx2", "httpx", "requests"):
        module = sys.modules.get(name)
        error = getattr(module, "HTTPError", None) or getattr(
            module, "RequestException", None
        )
        if isinstance(error, type) and issubclass(error, BaseException):
            types.append(error)
    return tuple(types)


def redact(text: str, token: str | None) -> str:
    """Replace every occurrence of the token with ``***``."""
    return text.replace(token, "***") if token else text
