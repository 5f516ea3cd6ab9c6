"""sae-lens-ext plugin: tokenized SAEs (Dooms & Wilhelm 2024).

An SAE-Lens architecture ``tokenized`` whose reconstruction adds learned
lookup tables to a TopK, ReLU or JumpReLU SAE: per token, per hashed token
pair, or keyed on a frozen upstream SAE's latents (Pearce's extension); its
training on SAE-Lens's ``SAETrainer``, a tokenized-vs-plain comparison, the
"effective tokens" report, and the ``tokenized`` analysis of how much of any
SAE's input and output is token identity.
"""

from .analysis import TokenIdentityAnalysis, TokenIdentityConfig
from .capture import capture_tokens
from .comparison import Comparison, compare_with_baseline, steps_to_target
from .effective_tokens import effective_tokens
from .evaluation import ce_metrics, reconstruction_metrics
from .keys import (
    NO_PREVIOUS,
    MissingTokensError,
    TokenKeys,
    pack_tokens,
    pair_rows,
    unpack_tokens,
)
from .lookup_init import (
    init_b_dec_to_mean,
    init_tables_from_means,
    init_tables_from_unigrams,
    init_upstream_table,
)
from .online import OnlineTokenizedTrainer
from .runner import TokenizedActivationsStore, TokenizedSAETrainingRunner
from .sae import (
    TokenizedJumpReLUSAE,
    TokenizedJumpReLUTrainingSAE,
    TokenizedSAE,
    TokenizedSAEConfig,
    TokenizedStandardSAE,
    TokenizedStandardTrainingSAE,
    TokenizedTopKSAE,
    TokenizedTopKTrainingSAE,
    TokenizedTrainingSAE,
    TokenizedTrainingSAEConfig,
    register_architecture,
)
from .training import TrainedSAE, TrainingOptions, train_tokenized_sae
from .upstream import upstream_fields

__all__ = [
    "NO_PREVIOUS",
    "Comparison",
    "MissingTokensError",
    "OnlineTokenizedTrainer",
    "TokenIdentityAnalysis",
    "TokenIdentityConfig",
    "TokenKeys",
    "TokenizedActivationsStore",
    "TokenizedJumpReLUSAE",
    "TokenizedJumpReLUTrainingSAE",
    "TokenizedSAETrainingRunner",
    "TokenizedSAE",
    "TokenizedSAEConfig",
    "TokenizedStandardSAE",
    "TokenizedStandardTrainingSAE",
    "TokenizedTopKSAE",
    "TokenizedTopKTrainingSAE",
    "TokenizedTrainingSAE",
    "TokenizedTrainingSAEConfig",
    "TrainedSAE",
    "TrainingOptions",
    "capture_tokens",
    "ce_metrics",
    "compare_with_baseline",
    "effective_tokens",
    "init_b_dec_to_mean",
    "init_tables_from_means",
    "init_tables_from_unigrams",
    "init_upstream_table",
    "pack_tokens",
    "pair_rows",
    "reconstruction_metrics",
    "register_architecture",
    "steps_to_target",
    "train_tokenized_sae",
    "unpack_tokens",
    "upstream_fields",
]

# Importing the package is enough for SAE.load_from_disk / SAE.from_pretrained
# to know the architecture; the plugin hook registers the same classes.
register_architecture()
