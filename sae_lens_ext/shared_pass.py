"""The one shared activation pass that feeds every analysis.

Token batches go through the model once, stopping after the SAE's hook
layer; the SAE encodes each batch once; every enabled analysis gets the same
:class:`ActivationBatch` through ``update``.  Memory is bounded by one batch.
Hook activations can be cached to disk (:mod:`sae_lens_ext.activation_cache`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .analysis import ActivationBatch, Analysis
from .positions import ALL, SKIP_BOS, PositionFilter
from .reconstruction import flat_rows, select_head

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
    for by_hook in multi_hook_activations(model, [hook_name], token_batches, select):
        yield by_hook[hook_name]


def multi_hook_activations(
    model,
    hook_names: list[str],
    token_batches: Iterable[torch.Tensor],
    positions: PositionFilter,
) -> Iterator[dict[str, HookActivations]]:
    """One forward pass per batch for every hook: ``{hook: HookActivations}``.

    The model stops after the deepest hook's layer (``stop_at_layer``) and
    caches only the hooks named (``names_filter``).  Batches whose selected
    positions are empty are skipped.
    """
    layers = [stop_layer(name) for name in hook_names]
    stop = None if None in layers else max(layers)
    for tokens in token_batches:
        tokens = tokens.to(model.cfg.device)
        with torch.no_grad():
            _, cache = model.run_with_cache(
                tokens, names_filter=list(hook_names), stop_at_layer=stop
            )
        seq_idx, pos_idx = positions.mask(tokens).nonzero(as_tuple=True)
        if len(seq_idx) == 0:
            continue
        context = tokens.cpu()
        where = torch.stack([seq_idx, pos_idx], dim=1).cpu()
        yield {
            name: HookActivations(
                sae_in=cache[name][seq_idx, pos_idx].flatten(1),
                token_context=context,
                positions=where,
            )
            for name in hook_names
        }


def check_activations(
    sae_in: torch.Tensor, d_in: int, hook_name: str, where: str = ""
) -> None:
    """Raise ActivationError for a wrong width or non-finite activations.

    ``where`` names the batch (``"batch 3 (rows 96-127)"``) in the message.
    """
    if sae_in.shape[-1] != d_in:
        raise ActivationError(
            f"hook {hook_name!r} gives activations of width {sae_in.shape[-1]}, but the "
            f"SAE expects d_in={d_in}. Use the SAE's own hook (cfg.metadata.hook_name) "
            "and the model it was trained on."
        )
    if not torch.isfinite(sae_in).all():
        bad = (~torch.isfinite(sae_in)).any(dim=-1).sum().item()
        raise ActivationError(
            f"{where + ': ' if where else ''}{bad} activation rows at {hook_name!r} "
            "contain NaN or inf. Check the "
            "model's weights and dtype (fp16 overflow?), or the cached activations."
        )


class SAEFeed:
    """One SAE's side of a pass: encode each batch once, hand it to its analyses.

    ``feed`` returns the rows delivered; ``live`` lists the analyses still
    taking batches.  With ``on_error``, an analysis whose ``update`` raises
    is handed to it and gets no further batches; without it the exception
    propagates.  A batch that does not fit the SAE raises ActivationError.
    """

    def __init__(
        self,
        sae,
        analyses: list[Analysis],
        hook_name: str,
        on_error: Callable[[Analysis, Exception], None] | None = None,
    ):
        self.sae = sae
        self.hook_name = hook_name
        self.live = list(analyses)
        self.on_error = on_error
        self.offset = 0
        self.index = 0

    def feed(self, hook_acts: HookActivations) -> int:
        """Encode one batch and update every live analysis; return its rows."""
        sae = self.sae
        sae_in = select_head(sae, hook_acts.sae_in).to(sae.W_dec.dtype)
        where = f"batch {self.index} (rows {self.offset}-{self.offset + sae_in.shape[0] - 1})"
        check_activations(sae_in, sae.cfg.d_in, self.hook_name, where)
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
            offset=self.offset,
        )
        for analysis in list(self.live):
            try:
                analysis.update(batch)
            except Exception as exc:
                if self.on_error is None:
                    raise
                self.on_error(analysis, exc)
                self.live.remove(analysis)
        self.offset += batch.n
        self.index += 1
        return batch.n

    def check_delivered(self) -> int:
        """The rows delivered; ActivationError when the pass gave none."""
        if self.offset == 0:
            raise ActivationError(
                "the dataset gave no tokens; check --dataset, --n-tokens and "
                "--positions (a token-id filter may match nothing)"
            )
        return self.offset


def run_shared_pass(
    sae,
    analyses: list[Analysis],
    activations: Iterable[HookActivations],
    *,
    hook_name: str,
    total_rows: int | None = None,
    on_error: Callable[[Analysis, Exception], None] | None = None,
) -> int:
    """Encode each activation batch once and feed it to every analysis.

    Returns the number of rows (token positions) delivered.  With
    ``on_error``, an analysis whose ``update`` raises is handed to it and
    gets no further batches (the pass stops when none is left); without it
    the exception propagates.
    """
    feed = SAEFeed(sae, analyses, hook_name, on_error)
    # hook_z SAEs see flat rows [n, n_heads * d_head]: the same math
    with flat_rows(sae), tqdm(total=total_rows, unit="tok", desc="shared pass") as bar:
        for hook_acts in activations:
            bar.update(feed.feed(hook_acts))
            if not feed.live:
                break
    return feed.check_delivered()
