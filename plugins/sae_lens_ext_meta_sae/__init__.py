"""sae-lens-ext plugin: meta-SAEs (Bussmann, Pearce, Leask, Bloom, Sharkey, Nanda 2024).

A BatchTopK SAE trained on a base SAE's unit-normalised decoder rows
describes every base latent as a sparse combination of meta-latents.
"""

from .analysis import MetaSAEAnalysis
from .config import PAPER_META_RATIO, MetaSAEConfig
from .decompose import MetaDecomposition, decompose
from .meta_sae import decoder_rows, fit_meta_sae, train_meta_sae
from .synthetic import PlantedDecoder, mean_max_cosine, planted_decoder
from .trainer import MetaSAETrainer, MetaSAEWeights, TrainingLog

__all__ = [
    "PAPER_META_RATIO",
    "MetaDecomposition",
    "MetaSAEAnalysis",
    "MetaSAEConfig",
    "MetaSAETrainer",
    "MetaSAEWeights",
    "PlantedDecoder",
    "TrainingLog",
    "decompose",
    "decoder_rows",
    "fit_meta_sae",
    "mean_max_cosine",
    "planted_decoder",
    "train_meta_sae",
]
