"""Both absorption diagnostics over one stream, and the ``absorption_report`` API."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd
import torch
from matplotlib.figure import Figure

from .boundaries import UnknownConvention, previous_tokens
from .config import AbsorptionConfig
from .discrepancy import DiscrepancyAccumulator, DiscrepancyResult
from .first_letter import FirstLetterResult, first_letter_absorption
from .letters import LetterSampler, LettersUnavailable

NO_TOKENIZER = (
    "First-letter absorption skipped: no tokenizer (run with a model, or pass "
    "tokenizer= to absorption_report)."
)
NO_TOKENS = "First-letter absorption skipped: the activations came without token ids."


@dataclass
class AbsorptionReport:
    """The encoder-vs-decoder discrepancy and, when possible, first-letter absorption."""

    config: AbsorptionConfig
    discrepancy: DiscrepancyResult
    first_letter: FirstLetterResult | None
    letters_note: str
    labelling: dict | None = None

    @property
    def metrics(self) -> dict[str, float]:
        """Headline numbers of both diagnostics (first-letter ones prefixed)."""
        metrics = self.discrepancy.metrics(self.config.flag_threshold)
        if self.first_letter is not None:
            for key, value in self.first_letter.metrics.items():
                metrics[f"first_letter_{key}"] = value
        for key, value in (self.labelling or {}).items():
            metrics[f"first_letter_{key}"] = value
        return metrics

    @property
    def tables(self) -> dict[str, pd.DataFrame]:
        """``latents``, ``absorbers``, ``suspects`` and, when run, ``letters``/``letter_rows``."""
        tables = {
            "latents": self.discrepancy.latents,
            "absorbers": self.discrepancy.absorbers,
            "suspects": _flat(self.discrepancy.suspects),
        }
        if self.first_letter is not None:
            tables["letters"] = self.first_letter.letters
            tables["letter_rows"] = self.first_letter.rows
        return tables

    def plots(self) -> dict[str, Figure]:
        """Overlap histogram and, when run, per-letter absorption."""
        plots = {"overlap_histogram": overlap_histogram(self.discrepancy.latents)}
        if self.first_letter is not None:
            plots["letter_absorption"] = letter_plot(
                self.first_letter.letters, self.config.min_probe_f1
            )
        return plots

    def card(self) -> str:
        """A Markdown model-card section."""
        from .card import card_text

        return card_text(self)


class AbsorptionAccumulator:
    """Feeds each batch to the discrepancy accumulator and the letter sampler."""

    def __init__(self, sae, config: AbsorptionConfig, tokenizer=None):
        self.sae = sae
        self.config = config
        self.tokenizer = tokenizer
        self.discrepancy = DiscrepancyAccumulator(sae, config)
        self.letter_note = "" if tokenizer is not None else NO_TOKENIZER
        self.sampler = None
        if config.letters and tokenizer is not None:
            try:
                self.sampler = LetterSampler(
                    tokenizer,
                    max_rows=config.letter_rows,
                    rows_per_token=config.rows_per_token,
                    n_codes=config.codes_per_row,
                )
            except UnknownConvention as error:
                self.letter_note = f"First-letter absorption skipped: {error}."

    def update(self, batch) -> None:
        """Merge one batch (``sae_in``, ``feature_acts``, ``offset``, optional tokens)."""
        with one_thread():
            self._update(batch)

    def _update(self, batch) -> None:
        self.discrepancy.update(batch)
        tokens = getattr(batch, "tokens", None)
        if self.sampler is not None:
            if tokens is None:
                self.sampler, self.letter_note = None, NO_TOKENS
                return
            self.sampler.update(
                tokens, batch.sae_in, batch.feature_acts, previous_tokens(batch)
            )

    def result(self, seed: int = 0) -> AbsorptionReport:
        """Score both diagnostics (on one thread, see :func:`one_thread`)."""
        with one_thread():
            return self._result(seed)

    def _result(self, seed: int) -> AbsorptionReport:
        decode = self.tokenizer.decode if self.tokenizer is not None else None
        discrepancy = self.discrepancy.result(decode)
        first_letter, note = None, self.letter_note
        if not self.config.letters:
            note = "First-letter absorption not requested (letters=False)."
        elif self.sampler is not None:
            labelling = self._labelling()
            try:
                first_letter = first_letter_absorption(
                    self.sampler.rows(),
                    self.sae,
                    self.config,
                    seed=seed,
                    token_text=self.sampler.letters.text,
                )
                note = _letters_note(first_letter, self.config)
            except LettersUnavailable as error:
                note = f"First-letter absorption not evaluated: {error}."
            return AbsorptionReport(
                self.config, discrepancy, first_letter, note, labelling
            )
        return AbsorptionReport(self.config, discrepancy, first_letter, note)

    def _labelling(self) -> dict:
        """The labelled share of the stream and the tokenizer's convention."""
        return {
            **self.sampler.counts.metrics(),
            "convention": self.sampler.letters.convention.name,
        }


@contextlib.contextmanager
def one_thread():
    """Run torch on one thread inside the block, then restore the setting.

    The streaming update and the probe fits are many small tensor operations
    (comparisons and top-k on one batch, LBFGS on ``[rows, d_in]``): a
    second thread barely helps them on an idle machine and made them 10x
    slower on a busy 2-core one (measured: 19.7 s vs 1.8 s for the demo's
    streaming update).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def absorption_report(
    sae,
    source,
    *,
    top_n: int = 32,
    model=None,
    tokenizer=None,
    n_tokens: int = 65_536,
    batch_size: int = 32,
    seed: int = 0,
    **options,
) -> AbsorptionReport:
    """Absorption diagnostics of ``sae`` on ``source``.

    ``source`` is a float tensor of SAE inputs ``[n, d_in]``, an iterable of
    such tensors, or an integer tensor of token ids ``[n_seq, context]``
    (then ``model`` is required: its activations at the SAE's hook are
    used, the first ``n_tokens`` of them, and its tokenizer labels first
    letters).  Other keyword arguments are :class:`AbsorptionConfig`
    fields.  Activations alone give the encoder-vs-decoder diagnostic; the
    first-letter rate also needs token ids and a tokenizer.
    """
    config = AbsorptionConfig(top_n=top_n, **options)
    if isinstance(source, torch.Tensor) and not source.is_floating_point():
        if model is None:
            raise ValueError(
                "token ids need a model to produce activations; pass model= "
                "(or pass activations [n, d_in] as a float tensor)"
            )
        tokenizer = tokenizer if tokenizer is not None else model.tokenizer
        batches = _model_batches(sae, model, source, n_tokens, batch_size)
    else:
        batches = _activation_batches(sae, source)
    accumulator = AbsorptionAccumulator(sae, config, tokenizer)
    from sae_lens_ext.shared_pass import run_shared_pass

    run_shared_pass(sae, [accumulator], batches, hook_name=_hook_name(sae))
    return accumulator.result(seed)


def _hook_name(sae) -> str:
    return getattr(sae.cfg.metadata, "hook_name", None) or "(activations)"


def _model_batches(sae, model, tokens, n_tokens, batch_size):
    from sae_lens_ext.shared_pass import model_activations
    from sae_lens_ext.tokens import iter_token_batches

    hook_name = getattr(sae.cfg.metadata, "hook_name", None)
    if not hook_name:
        raise ValueError(
            "the SAE's cfg.metadata.hook_name is not set, so it is unknown which "
            "model activations to read; set it"
        )
    skip_bos = getattr(sae.cfg.metadata, "prepend_bos", True) is not False
    return model_activations(
        model,
        hook_name,
        iter_token_batches(tokens, batch_size, n_tokens),
        skip_bos=skip_bos,
    )


@dataclass
class _Activations:
    """Activations with no token information, shaped like the host's batches."""

    sae_in: torch.Tensor
    token_context = None
    positions = None

    @property
    def tokens(self):
        return None


def _activation_batches(sae, source) -> Iterable[_Activations]:
    if isinstance(source, torch.Tensor):
        if source.ndim != 2:
            raise ValueError(
                f"activations must be a [n, d_in] tensor, got shape {tuple(source.shape)}"
            )
        source = source.split(4096)
    for chunk in source:
        if not isinstance(chunk, torch.Tensor) or not chunk.is_floating_point():
            raise TypeError(
                "source must be float activations [n, d_in] (a tensor or an iterable "
                "of tensors) or integer token ids [n_seq, context] with model="
            )
        yield _Activations(chunk)


def _letters_note(result: FirstLetterResult, config: AbsorptionConfig) -> str:
    metrics = result.metrics
    if metrics["letters_evaluated"] == 0:
        return (
            f"No letter's ground-truth probe reached F1 {config.min_probe_f1} on "
            f"held-out tokens (mean {metrics['mean_probe_f1']:.2f}) although "
            f"{metrics['letters_probed']} letters had enough labelled word-starting "
            "rows: this model does not linearly represent first letters at this "
            "hook, so its per-letter absorption rates (table letters) are not "
            "meaningful."
        )
    return ""


def _flat(table: pd.DataFrame) -> pd.DataFrame:
    """List columns as comma-separated strings (parquet/CSV friendly)."""
    table = table.copy()
    for column in table.columns:
        if table[column].map(lambda v: isinstance(v, list)).any():
            table[column] = table[column].map(lambda v: ", ".join(map(str, v)))
    return table


def overlap_histogram(latents: pd.DataFrame) -> Figure:
    """Histogram of encoder/decoder top-N overlap, suspected latents stacked."""
    alive = latents[~latents["dead"] & ~latents["rare"]]
    suspected = alive["absorption_score"] > 0
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    bins = [i / 20 for i in range(21)]
    ax.hist(
        [alive.loc[~suspected, "overlap"], alive.loc[suspected, "overlap"]],
        bins=bins,
        stacked=True,
        color=["#3b6ea5", "#c0504d"],
        label=["no absorption found", "absorption score > 0"],
    )
    ax.set_xlabel("overlap of encoder and decoder top-N inputs")
    ax.set_ylabel("latents")
    ax.legend()
    ax.set_title(f"{len(alive)} latents firing at least top_n times")
    fig.tight_layout()
    return fig


def letter_plot(letters: pd.DataFrame, min_probe_f1: float) -> Figure:
    """Absorption rate and fraction per letter; weak-probe letters greyed."""
    fig = Figure(figsize=(8, 3.5))
    ax = fig.subplots()
    positions = range(len(letters))
    good = letters["probe_f1"] >= min_probe_f1
    colours = ["#c0504d" if g else "#bbbbbb" for g in good]
    ax.bar([p - 0.2 for p in positions], letters["absorption_rate"], 0.4, color=colours)
    ax.bar(
        [p + 0.2 for p in positions],
        letters["absorption_fraction"],
        0.4,
        color=colours,
        alpha=0.5,
    )
    ax.plot(list(positions), letters["probe_f1"], "k.", label="probe F1")
    ax.set_xticks(list(positions), letters["letter"])
    ax.set_ylim(0, 1)
    ax.set_ylabel("full rate (solid), fraction (light)")
    ax.set_title(f"first-letter absorption (grey: probe F1 < {min_probe_f1})")
    ax.legend()
    fig.tight_layout()
    return fig
