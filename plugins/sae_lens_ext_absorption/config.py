"""Options of the absorption analysis (``--absorption.<field>`` on the CLI)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class AbsorptionConfig:
    """Options of both absorption diagnostics.

    The encoder-vs-decoder diagnostic keeps, per latent, the ``top_n`` rows
    with the largest encoder activation and the ``top_n`` rows with the
    largest projection on the unit decoder direction; the first-letter
    evaluation keeps a bounded sample of labelled rows for its probes.
    """

    top_n: int = field(
        default=32, metadata={"help": "rows kept per latent for each top-N list"}
    )
    codes_per_row: int = field(
        default=32,
        metadata={"help": "largest latent activations stored per kept row"},
    )
    context_tokens: int = field(
        default=12, metadata={"help": "tokens of context kept for examples"}
    )
    share_threshold: float = field(
        default=0.4,
        metadata={
            "help": "share of the projection the absorbing latents must carry "
            "(SAEBench's 0.4)"
        },
    )
    absorber_cos_threshold: float = field(
        default=0.1,
        metadata={"help": "minimum decoder cosine of an absorbing latent"},
    )
    flag_threshold: float = field(
        default=0.25,
        metadata={"help": "absorption score above which a latent is suspected"},
    )
    n_suspects: int = field(
        default=25, metadata={"help": "suspected latents listed with examples"}
    )
    letters: bool = field(
        default=True,
        metadata={"help": "run the first-letter evaluation (needs a tokenizer)"},
    )
    letter_rows: int = field(
        default=16_384,
        metadata={"help": "labelled rows kept for the first-letter probes"},
    )
    rows_per_token: int = field(
        default=4, metadata={"help": "occurrences kept per distinct token"}
    )
    test_fraction: float = field(
        default=0.2, metadata={"help": "fraction of distinct tokens held out"}
    )
    max_k: int = field(
        default=10, metadata={"help": "largest k of the k-sparse probes"}
    )
    l1_penalty: float = field(
        default=1e-3,
        metadata={"help": "L1 strength of the probe that ranks latents per letter"},
    )
    f1_jump: float = field(
        default=0.03,
        metadata={"help": "F1 gain that admits one more main latent"},
    )
    min_probe_f1: float = field(
        default=0.6,
        metadata={"help": "probe F1 a letter needs to enter the headline mean"},
    )
    subtract_b_dec: bool = field(
        default=True,
        metadata={
            "help": "project x - decode(0) (x - b_dec without normalisation) on the "
            "probe (False: raw x, as SAEBench)"
        },
    )
    probe_training: str = field(
        default="exact",
        metadata={
            "help": "exact: probes solved to their optimum; saebench: trained as "
            "SAEBench trains them (Adam epochs, its L1 ranking, scikit-learn's "
            "k-sparse probes), for number-for-number comparison"
        },
    )
    sparse_probe_epochs: int = field(
        default=50,
        metadata={
            "help": "epochs of SAEBench's L1 ranking probe (its "
            "k_sparse_probe_num_epochs; only with probe_training=saebench)"
        },
    )
    dtype: str = field(
        default="float32",
        metadata={"help": "decoder projections in float32 or bfloat16 (faster)"},
    )

    def __post_init__(self):
        for name in ("top_n", "codes_per_row", "letter_rows", "rows_per_token"):
            if getattr(self, name) < 1:
                raise ValueError(f"absorption option {name} must be at least 1")
        if self.l1_penalty <= 0:
            raise ValueError("absorption option l1_penalty must be > 0")
        if self.max_k < 1:
            raise ValueError("absorption option max_k must be at least 1")
        if self.context_tokens < 1:
            raise ValueError("absorption option context_tokens must be at least 1")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(
                "absorption option test_fraction must lie strictly between 0 and 1"
            )
        if self.probe_training not in ("exact", "saebench"):
            raise ValueError(
                f"absorption option probe_training must be 'exact' or 'saebench', "
                f"not {self.probe_training!r}"
            )
        if self.sparse_probe_epochs < 1:
            raise ValueError("absorption option sparse_probe_epochs must be at least 1")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(
                f"absorption option dtype must be 'float32' or 'bfloat16', "
                f"not {self.dtype!r}"
            )
