"""``train_meta_sae``: a BatchTopK meta-SAE on a base SAE's decoder, as an SAE-Lens SAE.

The meta-SAE's samples are the base SAE's decoder rows, normalised to unit
length, so its ``d_in`` is the base SAE's ``d_in``.  It is returned as a
SAE-Lens ``JumpReLUSAE`` whose threshold reproduces BatchTopK over the whole
decoder (the way SAE-Lens saves BatchTopK SAEs for inference), with
metadata naming the base SAE, so it saves, loads and uploads like any SAE.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch

from .config import MetaSAEConfig
from .trainer import MetaSAETrainer, MetaSAEWeights, TrainingLog

if TYPE_CHECKING:
    from sae_lens import SAE, JumpReLUSAE

#: Base SAE metadata recorded as ``base_<field>``.  The meta-SAE reads
#: decoder directions, not activations, so it gets no ``hook_name`` of its
#: own (SAE-Lens would otherwise splice it into the model at that hook).
BASE_METADATA = ("model_name", "hook_name", "hook_head_index")


def decoder_rows(sae: SAE, latents: torch.Tensor | None = None) -> torch.Tensor:
    """The base SAE's decoder rows ``[n, d_in]`` as unit vectors (float32).

    ``latents`` (base latent ids) selects rows; None takes all ``d_sae``.
    Raises ValueError when a selected row is zero or not finite: such a
    latent has no direction to describe.
    """
    weights = getattr(sae, "W_dec", None)
    if not isinstance(weights, torch.Tensor) or weights.ndim != 2:
        raise TypeError(
            "expected an SAE-Lens SAE with a 2-D decoder W_dec [d_sae, d_in]; got "
            f"{type(sae).__name__}"
        )
    ids = latent_ids(weights.shape[0], latents)
    rows = weights.detach()[ids].float().cpu()
    broken = ids[~torch.isfinite(rows).all(dim=1)]
    if broken.numel():
        raise ValueError(
            f"the base SAE's decoder has {broken.numel()} rows with NaN or infinite "
            f"values (latents {_first(broken)}); repair those latents or leave them "
            "out (the latents argument) before training a meta-SAE"
        )
    norms = rows.norm(dim=1)
    empty = ids[norms <= 1e-8]
    if empty.numel():
        raise ValueError(
            f"the base SAE's decoder has {empty.numel()} zero rows (latents "
            f"{_first(empty)}): a zero direction cannot be decomposed; leave those "
            "latents out (the latents argument) or give them a direction"
        )
    return rows / norms[:, None]


def latent_ids(d_sae: int, latents: torch.Tensor | None) -> torch.Tensor:
    """Sorted base latent ids: ``latents`` checked against ``d_sae``, or all."""
    if latents is None:
        return torch.arange(d_sae)
    ids = torch.as_tensor(latents, dtype=torch.long).reshape(-1).unique()
    if ids.numel() == 0:
        raise ValueError("latents is empty: pass at least one base latent id")
    if int(ids[0]) < 0 or int(ids[-1]) >= d_sae:
        raise ValueError(f"latents must be ids in [0, {d_sae}); got {_first(ids)}")
    return ids


def _first(index: torch.Tensor, n: int = 5) -> str:
    shown = ", ".join(str(int(i)) for i in index[:n])
    return shown + (", ..." if index.numel() > n else "")


def train_meta_sae(
    sae: SAE,
    *,
    d_meta: int | None = None,
    k: float = 4.0,
    steps: int = 2000,
    seed: int = 0,
    batch_size: int = 4096,
    lr: float = 1e-3,
    autocast: bool = True,
    release: str | None = None,
    sae_id: str | None = None,
    latents: torch.Tensor | None = None,
    progress: bool = True,
    firing_frequency: torch.Tensor | None = None,
    **options,
) -> JumpReLUSAE:
    """Train a BatchTopK meta-SAE on ``sae``'s unit-normalised decoder rows.

    ``d_meta`` defaults to the paper's ratio (2304 meta-latents for 49152
    base latents); ``k`` is the mean number of active meta-latents per base
    latent.  Other :class:`MetaSAEConfig` fields may be passed as keywords.
    ``release`` and ``sae_id`` name the base SAE in the result's metadata.
    ``latents`` restricts training to those base latent ids (e.g. the ones
    that fire: a dead latent's decoder row is often still its random init).
    ``firing_frequency`` ``[d_sae]`` is needed with ``sampling="frequency"``.
    Returns a SAE-Lens ``JumpReLUSAE`` with ``d_in`` equal to the base
    SAE's ``d_in``; training statistics are in ``cfg.metadata``.
    """
    unknown = set(options) - {f.name for f in dataclasses.fields(MetaSAEConfig)}
    if unknown:
        raise TypeError(
            f"unknown option(s) {sorted(unknown)}; MetaSAEConfig fields are "
            f"{[f.name for f in dataclasses.fields(MetaSAEConfig)]}"
        )
    config = MetaSAEConfig(
        d_meta=d_meta,
        k=k,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        autocast=autocast,
        seed=seed,
        **options,
    )
    meta_sae, _ = fit_meta_sae(
        sae,
        config,
        release=release,
        sae_id=sae_id,
        latents=latents,
        progress=progress,
        firing_frequency=firing_frequency,
    )
    return meta_sae


def fit_meta_sae(
    sae: SAE,
    config: MetaSAEConfig,
    *,
    release: str | None = None,
    sae_id: str | None = None,
    latents: torch.Tensor | None = None,
    progress: bool = True,
    firing_frequency: torch.Tensor | None = None,
) -> tuple[JumpReLUSAE, TrainingLog]:
    """Like :func:`train_meta_sae` from a config; also returns the training log."""
    rows = decoder_rows(sae, latents)
    config.validate(rows.shape[0])
    weights = sampling_weights(config, firing_frequency, sae, latents)
    # trains on the base SAE's device (the run's); the weights come back to CPU
    trainer = MetaSAETrainer(
        rows.to(sae.W_dec.device),
        config.meta_width(rows.shape[0]),
        config,
        row_weights=weights,
    )
    weights = trainer.fit(progress=progress)
    meta_sae = to_sae_lens(
        weights,
        base=sae,
        config=config,
        log=trainer.log,
        release=release,
        sae_id=sae_id,
    )
    return meta_sae, trainer.log


def sampling_weights(
    config: MetaSAEConfig,
    firing_frequency: torch.Tensor | None,
    sae: SAE,
    latents: torch.Tensor | None,
) -> torch.Tensor | None:
    """Per trained row, its sampling weight: None (uniform) or its frequency."""
    if config.sampling != "frequency":
        return None
    if firing_frequency is None:
        raise ValueError(
            "sampling='frequency' needs the base latents' firing frequencies: "
            "pass firing_frequency (the analysis counts them on the run's tokens)"
        )
    ids = latent_ids(int(sae.W_dec.shape[0]), latents)
    return torch.as_tensor(firing_frequency, dtype=torch.float64)[ids]


def to_sae_lens(
    weights: MetaSAEWeights,
    *,
    base: SAE,
    config: MetaSAEConfig,
    log: TrainingLog,
    release: str | None,
    sae_id: str | None,
) -> JumpReLUSAE:
    """Wrap trained weights as a SAE-Lens ``JumpReLUSAE`` with metadata."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    d_meta, d_in = weights.W_dec.shape
    cfg = JumpReLUSAEConfig(d_in=d_in, d_sae=d_meta, dtype="float32", device="cpu")
    cfg.metadata.model_name = base.cfg.metadata.model_name
    for name in BASE_METADATA:
        cfg.metadata[f"base_{name}"] = base.cfg.metadata[name]
    cfg.metadata.base_release = release
    cfg.metadata.base_sae_id = sae_id
    cfg.metadata.base_d_sae = int(base.cfg.d_sae)
    cfg.metadata.base_latents_used = log.rows
    cfg.metadata.meta_sae = True
    cfg.metadata.training_architecture = "batchtopk"
    cfg.metadata.meta_sae_training = {
        **dataclasses.asdict(config),
        "d_meta": d_meta,
        "final_batch_mse": log.losses[-1] if log.losses else None,
        "resampled_latents": log.resampled,
        "seconds": round(log.seconds, 3),
        "inputs": "unit-normalised decoder rows of the base SAE",
    }
    meta_sae = JumpReLUSAE(cfg)
    state = {
        "W_enc": weights.W_enc,
        "b_enc": weights.b_enc,
        "W_dec": weights.W_dec,
        "b_dec": weights.b_dec,
        "threshold": torch.full((d_meta,), weights.threshold),
    }
    meta_sae.load_state_dict({name: t.cpu().contiguous() for name, t in state.items()})
    return meta_sae.eval()
