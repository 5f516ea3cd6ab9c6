"""What an analysis is: its inputs, its per-batch accumulator, its result.

The host drives every enabled analysis through the same three steps::

    analysis = AnalysisClass(config, context)   # once, before any data
    analysis.update(batch)                      # per shared-pass batch
    result = analysis.finish()                  # once, after the pass

Analyses whose ``needs`` do not include ``"activations"`` never see
``update``; they work from ``context.sae`` (and ``context.model`` when they
need it) in ``finish``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

NEEDS = frozenset({"weights", "activations", "tokens", "model"})


@dataclass
class RunContext:
    """Everything an analysis may read about the run it belongs to.

    ``model`` is None unless some enabled analysis needs ``"activations"``,
    ``"tokens"`` or ``"model"``.  ``tokenizer`` is the model's tokenizer when
    one is loaded.  ``out_dir`` is this analysis's own folder in the run
    directory (it exists before ``__init__`` is called).
    """

    sae: SAE
    release: str
    sae_id: str
    out_dir: Path
    device: str = "cpu"
    seed: int = 0
    model: HookedTransformer | None = None
    hook_name: str | None = None
    dataset: str | None = None

    @property
    def tokenizer(self):
        """The model's tokenizer, or None when no model is loaded."""
        return None if self.model is None else self.model.tokenizer


@dataclass
class ActivationBatch:
    """One batch of the shared pass, flattened over (sequence, position).

    ``sae_in`` holds the hook activations ``[n, d_in]``, ``feature_acts`` the
    SAE's encoding ``[n, d_sae]`` and ``sae_out`` its reconstruction
    ``[n, d_in]``.  ``tokens`` are the token ids at those positions ``[n]``;
    ``token_context`` the full sequences ``[n_seq, seq_len]`` with
    ``positions`` ``[n, 2]`` giving (sequence index, position) of each row,
    so an analysis can show a context around a position.  ``offset`` is the
    number of rows delivered before this batch, which makes
    ``offset + arange(n)`` a global row id.
    """

    sae_in: torch.Tensor
    feature_acts: torch.Tensor
    sae_out: torch.Tensor
    tokens: torch.Tensor
    token_context: torch.Tensor
    positions: torch.Tensor
    offset: int

    @property
    def n(self) -> int:
        """Number of rows (token positions) in the batch."""
        return self.sae_in.shape[0]


@dataclass
class AnalysisResult:
    """What an analysis returns; the host writes it to the run directory.

    - ``metrics``: headline numbers (JSON-serialisable), copied to
      ``summary.json`` and the model card.
    - ``tables``: pandas DataFrames, written as parquet (and CSV when small).
    - ``tensors``: written to ``tensors.safetensors``.
    - ``plots``: matplotlib figures, written as PNG.
    - ``saes``: SAE-Lens SAEs, each saved in SAE-Lens format in its own
      folder (``cfg.json`` + ``sae_weights.safetensors``) so it loads back
      with ``SAE.load_from_disk`` or ``SAE.from_pretrained(repo, folder)``.
    - ``card``: a Markdown section for the model card (without a heading;
      the host adds ``## <analysis title>``).
    - ``saebench``: numbers computed only for the analysis's SAEBench
      mapping (``register_saebench_evals``); the host writes them nowhere
      else.
    """

    metrics: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    plots: dict[str, Figure] = field(default_factory=dict)
    saes: dict[str, SAE] = field(default_factory=dict)
    card: str = ""
    saebench: dict[str, Any] = field(default_factory=dict)


@dataclass
class NoConfig:
    """Config for an analysis that takes no options."""


class Analysis:
    """Base class for analyses contributed by ``register_analyses``.

    Subclasses set the class attributes and override ``update`` (when they
    need activations) and ``finish``.  ``headline_metrics`` names the
    metrics that must come out as finite numbers: if one is null, NaN or
    infinite the analysis fails instead of writing a result that looks valid.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    description: ClassVar[str] = ""
    config_class: ClassVar[type] = NoConfig
    needs: ClassVar[frozenset[str]] = frozenset({"weights"})
    headline_metrics: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any, context: RunContext):
        self.config = config
        self.context = context

    def update(self, batch: ActivationBatch) -> None:
        """Accumulate one batch of the shared activation pass."""

    def finish(self) -> AnalysisResult:
        """Return the analysis's result once the pass is over."""
        raise NotImplementedError

    @classmethod
    def validate(cls) -> None:
        """Raise ValueError when the class is not a well-formed analysis."""
        if not cls.name or not cls.name.replace("_", "").isalnum():
            raise ValueError(f"{cls.__name__}.name must be a non-empty identifier")
        if not dataclasses.is_dataclass(cls.config_class):
            raise ValueError(f"{cls.__name__}.config_class must be a dataclass")
        unknown = set(cls.needs) - NEEDS
        if unknown:
            raise ValueError(
                f"{cls.__name__}.needs has unknown entries {sorted(unknown)}; "
                f"choose from {sorted(NEEDS)}"
            )

    @classmethod
    def needs_pass(cls) -> bool:
        """Whether this analysis consumes the shared activation pass."""
        return "activations" in cls.needs or "tokens" in cls.needs
