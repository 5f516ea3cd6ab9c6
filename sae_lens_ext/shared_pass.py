"""The one shared activation pass that feeds every analysis.

Token batches go through the model once, stopping after the SAE's hook
layer; the SAE encodes each batch once; every enabled analysis gets the same
:class:`ActivationBatch` through ``update``.  Memory is bounded by one batch.
Hook activations can be cached to disk as safetensors shards and reused.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .analysis import ActivationBatch, Analysis
from .positions import ALL, SKIP_BOS, PositionFilter

_LAYER = re.compile(r"^blocks\.(\d+)\.")


class ActivationError(ValueError):
    """The model's activations do not fit the SAE; the message says why."""


@dataclass
class HookActivations:
    """One batch of hook activations with where they came from."""

    sae_in: torch.Tensor
    token_context: torch.Tensor
    positions: torch.Tensor

    @property
    def tokens(self) -> torch.Tensor:
        """Token id at each row."""
        return self.token_context[self.positions[:, 0], self.positions[:, 1]]


def stop_layer(hook_name: str) -> int | None:
    """The layer to stop the model at so ``hook_name`` is the last one run."""
    match = _LAYER.match(hook_name)
    return int(match.group(1)) + 1 if match else None


def model_activations(
    model,
    hook_name: str,
    token_batches: Iterable[torch.Tensor],
    *,
    skip_bos: bool = True,
    positions: PositionFilter | None = None,
) -> Iterator[HookActivations]:
    """Run the model on each batch and yield the hook's activations, flattened.

    Only the ``positions`` selected are kept (default: all but the first
    when ``skip_bos``, else all), in (sequence, position) order.
    """
    select = positions or (SKIP_BOS if skip_bos else ALL)
    stop = stop_layer(hook_name)
    for tokens in token_batches:
        tokens = tokens.to(model.cfg.device)
        with torch.no_grad():
            _, cache = model.run_with_cache(
                tokens, names_filter=hook_name, stop_at_layer=stop
            )
        acts = cache[hook_name]
        seq_idx, pos_idx = select.mask(tokens).nonzero(as_tuple=True)
        if len(seq_idx) == 0:
            continue
        yield HookActivations(
            sae_in=acts[seq_idx, pos_idx].flatten(1),
            token_context=tokens.cpu(),
            positions=torch.stack([seq_idx, pos_idx], dim=1).cpu(),
        )


def check_activations(sae_in: torch.Tensor, d_in: int, hook_name: str) -> None:
    """Raise ActivationError for a wrong width or non-finite activations."""
    if sae_in.shape[-1] != d_in:
        raise ActivationError(
            f"hook {hook_name!r} gives activations of width {sae_in.shape[-1]}, but the "
            f"SAE expects d_in={d_in}. Use the SAE's own hook (cfg.metadata.hook_name) "
            "and the model it was trained on."
        )
    if not torch.isfinite(sae_in).all():
        bad = (~torch.isfinite(sae_in)).any(dim=-1).sum().item()
        raise ActivationError(
            f"{bad} activation rows at {hook_name!r} contain NaN or inf. Check the "
            "model's weights and dtype (fp16 overflow?), or the cached activations."
        )


def run_shared_pass(
    sae,
    analyses: list[Analysis],
    activations: Iterable[HookActivations],
    *,
    hook_name: str,
    total_rows: int | None = None,
) -> int:
    """Encode each activation batch once and feed it to every analysis.

    Returns the number of rows (token positions) delivered.
    """
    offset = 0
    dtype = sae.W_dec.dtype
    with tqdm(total=total_rows, unit="tok", desc="shared pass") as bar:
        for hook_acts in activations:
            sae_in = hook_acts.sae_in.to(dtype)
            check_activations(sae_in, sae.cfg.d_in, hook_name)
            with torch.no_grad():
                feature_acts = sae.encode(sae_in)
                sae_out = sae.decode(feature_acts)
            batch = ActivationBatch(
                sae_in=sae_in,
                feature_acts=feature_acts,
                sae_out=sae_out,
                tokens=hook_acts.tokens,
                token_context=hook_acts.token_context,
                positions=hook_acts.positions,
                offset=offset,
            )
            for analysis in analyses:
                analysis.update(batch)
            offset += batch.n
            bar.update(batch.n)
    if offset == 0:
        raise ActivationError(
            "the dataset gave no tokens; check --dataset, --n-tokens and "
            "--positions (a token-id filter may match nothing)"
        )
    return offset


def cache_key(model_name: str, hook_name: str, dataset: str, n_tokens: int) -> str:
    """A stable folder name for cached activations of one setting."""
    raw = json.dumps([model_name, hook_name, dataset, n_tokens])
    digest = hashlib.sha256(raw.encode()).hexdigest()[:16]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{model_name}__{hook_name}")
    return f"{safe}__{n_tokens}__{digest}"


class ActivationCache:
    """Hook activations stored as safetensors shards under one key's folder.

    A folder is complete once its ``manifest.json`` exists; shards are
    written to a temporary folder first, so an interrupted run leaves no
    half-written cache behind.
    """

    def __init__(self, root: Path, key: str):
        self.folder = Path(root) / key
        self.manifest = self.folder / "manifest.json"

    def exists(self) -> bool:
        """Whether a complete cache for this key is on disk."""
        return self.manifest.is_file()

    def read(self) -> Iterator[HookActivations]:
        """Yield the cached batches in order."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        info = json.loads(self.manifest.read_text())
        for shard in info["shards"]:
            path = self.folder / shard
            try:
                tensors = load_file(path)
            except (SafetensorError, FileNotFoundError) as exc:
                raise ActivationError(
                    f"activation cache shard {path} is unreadable ({exc}); delete "
                    f"{self.folder} to rebuild the cache"
                ) from exc
            yield HookActivations(
                sae_in=tensors["sae_in"],
                token_context=tensors["token_context"],
                positions=tensors["positions"],
            )

    def write_through(
        self, batches: Iterable[HookActivations], meta: dict
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
            shards.append(name)
            yield batch
        (tmp / "manifest.json").write_text(json.dumps({**meta, "shards": shards}))
        shutil.rmtree(self.folder, ignore_errors=True)
        tmp.rename(self.folder)
