"""Options of meta-SAE training, shared by the Python API and the analysis."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

#: Paper ratio: 2304 meta-latents for a 49152-latent base SAE (1 per 21.3).
PAPER_META_RATIO = 2304 / 49152
#: Allowed values of the string options.
CHOICES = {
    "sampling": ("uniform", "replacement", "frequency"),
    "decoder_norm": ("unit", "rescaled"),
    "b_dec_init": ("mean", "zero"),
}


@dataclass
class MetaSAEConfig:
    """How to train a meta-SAE on a base SAE's decoder.

    - ``d_meta``: number of meta-latents; None picks the paper's ratio,
      ``round(n * 2304 / 49152)`` for ``n`` base latents trained on (2304
      for a 49152-latent SAE; ``n < d_sae`` when dead latents are left out).
    - ``width_ratio``: instead, ``max(ceil(n * width_ratio), ceil(k))``
      meta-latents (SAEBench's meta_structure eval uses 0.25).
    - ``k``: mean number of active meta-latents per base latent (BatchTopK
      keeps the ``k * batch_size`` largest activations of each batch).
    - ``steps``, ``batch_size`` (capped at the number of base latents
      unless ``sampling`` is ``replacement``),
      ``lr`` (Adam), ``lr_decay_fraction``: the last fraction of steps
      decays the learning rate linearly to zero.
    - ``dead_after``: a meta-latent that has not fired for this many steps is
      dead; dead latents are re-initialised on the worst-reconstructed rows
      every ``resample_every`` steps, until ``resample_until`` (a fraction of
      the run; 0 disables resampling).
    - ``autocast``: compute the dense encoder pass in bfloat16 (the sparse
      decoder pass and all weights stay float32).
    - ``skip_dead`` (the analysis only): leave out base latents that never
      fired on the run's tokens; their decoder rows are untrained.
    - ``threads``: CPU threads while training; None uses one thread for
      small problems (where hand-offs between threads cost more than they
      save) or when the load average already fills every core (then a
      second thread makes each step several times slower), and torch's
      setting otherwise.
    - ``seed``: makes the run deterministic (None: the run's seed, or 0).
    - ``sampling``: ``uniform`` (each row once per epoch), ``replacement``
      (each batch drawn uniformly with replacement, as SAEBench does) or
      ``frequency`` (rows drawn in proportion to their base latent's firing
      frequency, so the meta-latents fit frequently used latents best).
    - ``decoder_norm``: ``unit`` keeps every meta-decoder row on the unit
      sphere (gradient projected, rows renormalised after each step);
      ``rescaled`` lets the row norms drift and scales each activation by
      its row's norm, as SAE-Lens's ``rescale_acts_by_decoder_norm`` (the
      function is the same, Adam's steps are not: their size relative to a
      row is set by the row's norm).
    - ``decoder_init_norm``: the rows' starting norm with ``rescaled``
      (SAE-Lens: 0.1; the encoder starts as the decoder's transpose).
    - ``b_dec_init``: ``mean`` (the mean decoder row) or ``zero`` (SAE-Lens).
    - ``grad_clip``: clip the norm of all gradients together to this before
      each Adam step, as SAE-Lens's trainer does at 1.0 (0: no clipping).
    - ``null_seeds``, ``null_margin``: the null baseline (see :mod:`.null`).
    """

    d_meta: int | None = field(
        default=None,
        metadata={"help": "meta-latents; default: latents used * 2304 / 49152"},
    )
    width_ratio: float | None = field(
        default=None,
        metadata={
            "help": "meta-latents as a fraction of latents used (SAEBench: 0.25)"
        },
    )
    k: float = field(
        default=4.0, metadata={"help": "mean active meta-latents per base latent"}
    )
    steps: int = field(default=2000, metadata={"help": "Adam steps"})
    batch_size: int = field(
        default=4096,
        metadata={
            "help": "decoder rows per step (capped at d_sae unless drawn with replacement)"
        },
    )
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    lr_decay_fraction: float = field(
        default=0.2, metadata={"help": "final fraction of steps decaying lr to 0"}
    )
    dead_after: int = field(
        default=100, metadata={"help": "steps without firing that make a latent dead"}
    )
    resample_every: int = field(
        default=250, metadata={"help": "steps between dead-latent resamples (0: off)"}
    )
    resample_until: float = field(
        default=0.6, metadata={"help": "fraction of the run during which to resample"}
    )
    autocast: bool = field(
        default=True, metadata={"help": "bfloat16 encoder pass (weights stay fp32)"}
    )
    skip_dead: bool = field(
        default=True, metadata={"help": "leave out latents that never fired in the run"}
    )
    threads: int | None = field(
        default=None,
        metadata={"help": "CPU threads; default: 1 if small or machine busy"},
    )
    seed: int | None = field(
        default=None, metadata={"help": "training seed; default: the run's seed"}
    )
    sampling: str = field(
        default="uniform",
        metadata={
            "help": "decoder rows per batch: uniform, or frequency (in proportion "
            "to each base latent's firing frequency)"
        },
    )
    decoder_norm: str = field(
        default="unit",
        metadata={
            "help": "meta-decoder rows: unit (kept on the unit sphere) or rescaled "
            "(free norms, activations scaled by them, as SAE-Lens)"
        },
    )
    decoder_init_norm: float = field(
        default=1.0,
        metadata={"help": "starting norm of the decoder rows (rescaled only)"},
    )
    b_dec_init: str = field(
        default="mean",
        metadata={"help": "decoder bias at the start: mean (of the rows) or zero"},
    )
    grad_clip: float = field(
        default=0.0,
        metadata={"help": "clip the total gradient norm to this (0: no clipping)"},
    )
    null_seeds: int = field(
        default=3,
        metadata={"help": "random decoders the null baseline trains on (0: no null)"},
    )
    null_margin: float = field(
        default=0.01,
        metadata={"help": "smallest FVE above null that counts as structure"},
    )

    def meta_width(self, d_sae: int) -> int:
        """The number of meta-latents for a base SAE of ``d_sae`` latents."""
        if self.d_meta is not None:
            return int(self.d_meta)
        if self.width_ratio is not None:
            return max(math.ceil(d_sae * self.width_ratio), math.ceil(self.k))
        return max(1, round(d_sae * PAPER_META_RATIO))

    def validate(self, d_sae: int) -> None:
        """Raise ValueError naming the fix when the options cannot work.

        ``d_sae`` is the number of base latents trained on.
        """
        if self.d_meta is not None and self.width_ratio is not None:
            raise ValueError(
                "give d_meta or width_ratio, not both: d_meta fixes the number of "
                "meta-latents, width_ratio sets it from the base SAE's width"
            )
        if self.width_ratio is not None and not 0 < self.width_ratio <= 1:
            raise ValueError(f"width_ratio must lie in (0, 1], got {self.width_ratio}")
        d_meta = self.meta_width(d_sae)
        if d_meta < 1:
            raise ValueError(f"d_meta must be at least 1, got {d_meta}")
        if d_meta > d_sae:
            raise ValueError(
                f"d_meta={d_meta} is larger than the {d_sae} base latents trained "
                "on: a meta-SAE compresses the base latents, so choose d_meta <= "
                f"{d_sae} (the paper's ratio gives "
                f"{max(1, round(d_sae * PAPER_META_RATIO))})"
            )
        if self.k > d_meta:
            raise ValueError(
                f"k={self.k} is larger than d_meta={d_meta}: at most d_meta "
                "meta-latents can be active, so lower k or raise d_meta"
            )
        self.check_fields()

    def __post_init__(self):
        self.check_fields()

    def check_fields(self) -> None:
        """Raise ValueError for options that cannot work whatever the SAE."""
        if self.d_meta is not None and self.d_meta < 1:
            raise ValueError(f"d_meta must be at least 1, got {self.d_meta}")
        if not self.k > 0:
            raise ValueError(f"k must be positive, got {self.k}")
        for name in ("steps", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer")
        if self.threads is not None and int(self.threads) < 1:
            raise ValueError(f"threads must be None or >= 1, got {self.threads}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.lr_decay_fraction <= 1:
            raise ValueError("lr_decay_fraction must lie in [0, 1]")
        if not 0 <= self.resample_until <= 1:
            raise ValueError("resample_until must lie in [0, 1]")
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"{name} must be one of {', '.join(map(repr, choices))}, got "
                    f"{getattr(self, name)!r}"
                )
        if not self.decoder_init_norm > 0:
            raise ValueError(
                f"decoder_init_norm must be positive, got {self.decoder_init_norm}"
            )
        if self.decoder_norm == "unit" and self.decoder_init_norm != 1:
            raise ValueError(
                f"decoder_init_norm={self.decoder_init_norm} needs "
                "decoder_norm='rescaled': unit decoder rows always have norm 1"
            )
        if not self.grad_clip >= 0:
            raise ValueError(f"grad_clip must be >= 0, got {self.grad_clip}")
        if int(self.null_seeds) < 0:
            raise ValueError(f"null_seeds must be >= 0, got {self.null_seeds}")
