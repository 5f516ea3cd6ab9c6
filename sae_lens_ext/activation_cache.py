"""Hook activations cached on disk, keyed by what produced them.

A cache folder's name is a hash of everything the activations depend on:
the token ids actually used (their content, not the dataset's path), the
model's identity (its name and a hash of its weights), the hook, which
positions are kept, the context size, prepend-BOS and ``n_tokens``.  An
edited dataset or a fine-tuned model therefore gets a new folder instead of
the old activations.

``manifest.json`` lists every shard with its SHA-256 and row count.  Before
a cached pass starts, the manifest is checked against the key, the shard
files on disk against the manifest, and every shard's bytes against its
checksum; any mismatch stops the run with "delete <folder> to rebuild".
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from .shared_pass import ActivationError, HookActivations

MANIFEST = "manifest.json"
SHARD_PATTERN = "shard_*.safetensors"
_CHUNK = 1 << 20


def tensor_digest(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 over names, dtypes, shapes and raw bytes of named tensors."""
    digest = hashlib.sha256()
    for name, tensor in tensors:
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_identity(model, model_name: str | None) -> dict:
    """The model's name and a hash of all its weights and buffers."""
    return {
        "model": model_name or type(model).__name__,
        "weights_sha256": tensor_digest(sorted(model.state_dict().items())),
    }


def cache_key_fields(
    *,
    tokens: torch.Tensor,
    model,
    model_name: str | None,
    hook_name: str,
    positions: str,
    context_size: int | None,
    prepend_bos: bool,
    n_tokens: int,
) -> dict:
    """Everything cached activations depend on, as a JSON-able dict.

    ``tokens`` are the token ids the pass will use (already cut to
    ``n_tokens``); ``positions`` names which positions are kept.
    """
    return {
        **model_identity(model, model_name),
        "tokens_sha256": tensor_digest([("tokens", tokens.long())]),
        "tokens_shape": list(tokens.shape),
        "hook": hook_name,
        "positions": positions,
        "context_size": context_size,
        "prepend_bos": bool(prepend_bos),
        "n_tokens": int(n_tokens),
    }


def cache_folder_name(key: dict) -> str:
    """A readable, collision-safe folder name for one key."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{key['model']}__{key['hook']}")
    return f"{safe}__{key['n_tokens']}__{digest[:16]}"


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class ActivationCache:
    """Hook activations stored as checksummed safetensors shards under one key.

    A folder is complete once its ``manifest.json`` exists; shards are
    written to a ``.partial`` folder that is renamed when the pass ends, so
    an interrupted run leaves no half-written cache behind.
    """

    def __init__(self, root: Path, key: dict):
        self.key = key
        self.folder = Path(root) / cache_folder_name(key)
        self.manifest = self.folder / MANIFEST

    def exists(self) -> bool:
        """Whether a finished cache for this key is on disk (not yet verified)."""
        return self.manifest.is_file()

    def _broken(self, what: str) -> ActivationError:
        return ActivationError(
            f"activation cache {self.folder}: {what}. The cached activations cannot "
            f"be trusted; delete {self.folder} to rebuild the cache (or run without "
            "--cache-activations)."
        )

    def verify(self) -> list[dict]:
        """Check the manifest, the shard list and every checksum; return the shards."""
        try:
            info = json.loads(self.manifest.read_text())
            shards = info["shards"]
            n_shards, n_rows = int(info["n_shards"]), int(info["n_rows"])
            names = [s["file"] for s in shards]
            listed_rows = sum(int(s["rows"]) for s in shards)
            checksums = [str(s["sha256"]) for s in shards]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            raise self._broken(
                f"manifest.json is unreadable ({type(exc).__name__}: {exc})"
            ) from exc
        if info.get("key") != self.key:
            raise self._broken("manifest.json was written for different settings")
        if len(shards) != n_shards or listed_rows != n_rows:
            raise self._broken(
                f"manifest.json lists {len(shards)} shards with {listed_rows} rows "
                f"but records {n_shards} shards with {n_rows} rows"
            )
        on_disk = sorted(p.name for p in self.folder.glob(SHARD_PATTERN))
        if on_disk != sorted(names):
            raise self._broken(
                f"the folder holds {len(on_disk)} shard files but manifest.json "
                f"lists {len(names)}"
            )
        for shard, checksum in zip(shards, checksums, strict=True):
            if file_sha256(self.folder / shard["file"]) != checksum:
                raise self._broken(
                    f"shard {shard['file']} does not match its checksum (altered "
                    "or corrupt)"
                )
        return shards

    def read(self) -> Iterator[HookActivations]:
        """Verify the whole cache, then yield the cached batches in order."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        shards = self.verify()

        def batches() -> Iterator[HookActivations]:
            for shard in shards:
                path = self.folder / shard["file"]
                try:
                    tensors = load_file(path)
                    batch = HookActivations(
                        sae_in=tensors["sae_in"],
                        token_context=tensors["token_context"],
                        positions=tensors["positions"],
                    )
                except (SafetensorError, OSError, KeyError) as exc:
                    raise self._broken(
                        f"shard {shard['file']} is unreadable ({exc})"
                    ) from exc
                if batch.sae_in.shape[0] != shard["rows"]:
                    raise self._broken(
                        f"shard {shard['file']} holds {batch.sae_in.shape[0]} rows, "
                        f"not the {shard['rows']} its manifest entry says"
                    )
                yield batch

        return batches()

    def write_through(
        self, batches: Iterable[HookActivations]
    ) -> Iterator[HookActivations]:
        """Yield ``batches`` unchanged while saving each one as a shard."""
        from safetensors.torch import save_file

        tmp = self.folder.with_name(self.folder.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        shards = []
        for index, batch in enumerate(batches):
            name = f"shard_{index:05d}.safetensors"
            save_file(
                {
                    "sae_in": batch.sae_in.contiguous(),
                    "token_context": batch.token_context.contiguous(),
                    "positions": batch.positions.contiguous(),
                },
                tmp / name,
            )
            rows = int(batch.sae_in.shape[0])
            shards.append(
                {"file": name, "rows": rows, "sha256": file_sha256(tmp / name)}
            )
            yield batch
        manifest = {
            "key": self.key,
            "n_shards": len(shards),
            "n_rows": sum(s["rows"] for s in shards),
            "shards": shards,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        shutil.rmtree(self.folder, ignore_errors=True)
        tmp.rename(self.folder)
