"""Named SAE releases contributed by plugins (``register_releases``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformer_lens import HookedTransformer


@dataclass
class Release:
    """A named set of SAEs in SAE-Lens format that loads with no network.

    ``saes`` maps each SAE id to its folder (``cfg.json`` +
    ``sae_weights.safetensors``).  ``load_model(device)`` builds the model
    the SAEs were trained on when it is not a TransformerLens pretrained
    name; ``load_tokens(n_seq)`` gives a default token dataset
    ``[n_seq, context]`` for analyses that need activations.
    """

    name: str
    saes: dict[str, Path]
    default_sae_id: str | None = None
    description: str = ""
    load_model: Callable[[str], HookedTransformer] | None = None
    load_tokens: Callable[[int | None], torch.Tensor] | None = None
    dataset: str | None = None
    extra: dict = field(default_factory=dict)
