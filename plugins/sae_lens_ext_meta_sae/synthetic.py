"""Decoders with known structure: rows built from sparse sets of directions.

Ground truth for tests and benchmarks.  Each of ``n_latents`` rows is a
positive combination of a few of ``n_directions`` random unit directions,
plus isotropic noise, normalised to unit length.  Directions are chosen
with Zipf-like popularity (a few shared by many rows, most by few), as the
meta-latents of real SAEs are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PlantedDecoder:
    """A synthetic decoder and the structure it was built from.

    ``decoder`` ``[n_latents, d_in]`` (unit rows), ``directions``
    ``[n_directions, d_in]`` (unit rows); row ``i`` was built from
    ``directions[parts[i, j]]`` with weights ``weights[i, j]`` (``[n_latents,
    max_parts]``; a zero weight marks an unused slot), before noise and
    normalisation.
    """

    decoder: torch.Tensor
    directions: torch.Tensor
    parts: torch.Tensor
    weights: torch.Tensor


def planted_decoder(
    n_latents: int,
    d_in: int,
    n_directions: int,
    *,
    max_parts: int = 3,
    noise: float = 0.1,
    zipf: float = 0.5,
    seed: int = 0,
) -> PlantedDecoder:
    """Build a decoder whose rows are sparse combinations of known directions.

    Each row uses between 1 and ``max_parts`` directions, drawn with
    popularity falling as ``rank ** -zipf`` (a repeated draw adds to the same
    direction), with weights uniform in [0.5, 1.5], then adds Gaussian noise
    whose norm is ``noise`` times the combination's norm.  Memory and time
    are linear in ``n_latents * d_in``.
    """
    if min(n_latents, d_in, n_directions, max_parts) < 1:
        raise ValueError("n_latents, d_in, n_directions and max_parts must be >= 1")
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(n_directions, d_in, generator=generator)
    directions /= directions.norm(dim=1, keepdim=True)
    popularity = torch.arange(1, n_directions + 1, dtype=torch.float) ** -zipf
    n_parts = torch.randint(1, max_parts + 1, (n_latents,), generator=generator)
    parts = torch.multinomial(
        popularity, n_latents * max_parts, replacement=True, generator=generator
    ).view(n_latents, max_parts)
    weights = torch.rand(n_latents, max_parts, generator=generator) + 0.5
    weights *= torch.arange(max_parts) < n_parts[:, None]
    signal = torch.zeros(n_latents, d_in)
    for slot in range(max_parts):
        signal.addcmul_(weights[:, slot, None], directions[parts[:, slot]])
    jitter = torch.randn(n_latents, d_in, generator=generator)
    jitter *= (
        noise * signal.norm(dim=1, keepdim=True) / jitter.norm(dim=1, keepdim=True)
    )
    decoder = signal + jitter
    decoder /= decoder.norm(dim=1, keepdim=True)
    return PlantedDecoder(decoder, directions, parts, weights)


def mean_max_cosine(truth: torch.Tensor, found: torch.Tensor) -> float:
    """Mean over rows of ``truth`` of the best cosine with any row of ``found``."""
    truth = truth / truth.norm(dim=1, keepdim=True)
    found = found / found.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return float((truth @ found.T).max(dim=1).values.mean())
