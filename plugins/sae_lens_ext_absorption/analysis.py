"""The ``absorption`` analysis on the host's shared pass."""

from __future__ import annotations

from sae_lens_ext import Analysis, AnalysisResult

from .config import AbsorptionConfig
from .report import AbsorptionAccumulator


class AbsorptionAnalysis(Analysis):
    """Encoder-vs-decoder discrepancy and first-letter absorption rate."""

    name = "absorption"
    title = "Feature absorption"
    description = (
        "encoder-vs-decoder top-N discrepancy per latent and first-letter "
        "absorption rate (Chanin et al. 2024, SAEBench)"
    )
    config_class = AbsorptionConfig
    needs = frozenset({"activations", "tokens"})

    def __init__(self, config: AbsorptionConfig, context):
        super().__init__(config, context)
        self.accumulator = AbsorptionAccumulator(
            context.sae, config, tokenizer=context.tokenizer
        )

    def update(self, batch) -> None:
        """Stream one batch into both diagnostics."""
        self.accumulator.update(batch)

    def finish(self) -> AnalysisResult:
        """Score every latent and every letter."""
        report = self.accumulator.result(seed=self.context.seed)
        return AnalysisResult(
            metrics=report.metrics,
            tables=report.tables,
            tensors=report.discrepancy.tensors,
            plots=report.plots(),
            card=report.card(),
        )
