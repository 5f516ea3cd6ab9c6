"""The ``tokenized`` analysis: how much of an SAE's input and output is token identity.

For any SAE, from the host's shared pass:

- the variance of the activations explained by their token's mean activation
  (the best any per-token lookup table can do; Dooms & Wilhelm 2024), the same
  for the SAE's reconstruction, and the SAE's own explained variance;
- per latent, the share of its activation variance explained by the current
  token; latents above ``token_latent_threshold`` behave like a lookup table
  and are the ones a tokenized SAE frees.

With ``train_sae`` (default), the analysis also trains a tokenized TopK SAE
of the analysed SAE's width and k on the same rows, in one streaming pass
(:class:`~.online.OnlineTokenizedTrainer`), reports its progressive-validation
learning curve and returns it in ``AnalysisResult.saes`` so the run publishes
it in SAE-Lens format.

Shares are leave-one-out estimates (each row predicted by the mean of the
*other* rows of its token; a token seen once is predicted by the overall
mean), so rare tokens do not inflate them.  Memory is ``O(vocab x (d_in +
d_sae))``, independent of the number of tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch
from matplotlib.figure import Figure

from sae_lens_ext import ActivationBatch, Analysis, AnalysisResult

from .keys import NO_PREVIOUS, pack_tokens
from .online import OnlineTokenizedTrainer
from .training import TrainingOptions


@dataclass
class TokenIdentityConfig:
    """Options of the ``tokenized`` analysis."""

    token_latent_threshold: float = field(
        default=0.9,
        metadata={"help": "per-latent token share above which a latent is token-like"},
    )
    min_firings: int = field(
        default=20,
        metadata={"help": "latents firing fewer times are left out of the shares"},
    )
    max_latent_table: int = field(
        default=50_000_000,
        metadata={"help": "skip per-latent shares when vocab x d_sae exceeds this"},
    )
    train_sae: bool = field(
        default=True,
        metadata={"help": "also train a tokenized TopK SAE on the run's rows"},
    )
    d_sae: int = field(
        default=0, metadata={"help": "its width (0: the analysed SAE's d_sae)"}
    )
    k: int = field(
        default=0,
        metadata={"help": "its k (0: the analysed SAE's k, or 32 if it has none)"},
    )
    pair_buckets: int = field(
        default=0, metadata={"help": "rows of its hashed token-pair table (0: none)"}
    )
    batch_size: int = field(default=1024, metadata={"help": "its training batch"})
    lr: float = field(default=4e-3, metadata={"help": "its learning rate"})
    buffer_rows: int = field(
        default=8192,
        metadata={"help": "rows evaluated, then shuffled and trained on, at a time"},
    )
    bf16: bool = field(
        default=True,
        metadata={"help": "train under bf16 autocast (fast with AVX-512 BF16 or AMX)"},
    )

    def __post_init__(self):
        if not 0 < self.token_latent_threshold <= 1:
            raise ValueError(
                "token_latent_threshold must lie in (0, 1], got "
                f"{self.token_latent_threshold}"
            )
        for name in ("min_firings", "max_latent_table", "d_sae", "k", "pair_buckets"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "buffer_rows"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"{name} must be at least 1, got {getattr(self, name)}"
                )
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


class GroupedMoments:
    """Per-group counts, sums and summed squares of vectors, grown on demand,
    on ``device`` (that of the activations)."""

    def __init__(self, n_groups: int, width: int, device=None):
        self.counts = torch.zeros(n_groups, dtype=torch.float64, device=device)
        self.sums = torch.zeros(n_groups, width, dtype=torch.float64, device=device)
        self.squares = torch.zeros(n_groups, width, dtype=torch.float64, device=device)

    def add(self, groups: torch.Tensor, values: torch.Tensor) -> None:
        """Accumulate ``values [n, width]`` into their ``groups [n]``."""
        groups = groups.to(self.counts.device)
        needed = int(groups.max()) + 1
        if needed > len(self.counts):
            self._grow(needed)
        values = values.double()
        self.counts.index_add_(0, groups, torch.ones_like(groups, dtype=torch.float64))
        self.sums.index_add_(0, groups, values)
        self.squares.index_add_(0, groups, values.pow(2))

    def _grow(self, n_groups: int) -> None:
        extra = n_groups - len(self.counts)
        self.counts = torch.cat([self.counts, self.counts.new_zeros(extra)])
        pad = self.sums.new_zeros(extra, self.sums.shape[1])
        self.sums = torch.cat([self.sums, pad])
        self.squares = torch.cat([self.squares, pad.clone()])

    def shares(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per column: (in-sample, leave-one-out) variance share of the group means."""
        n = self.counts.sum()
        total_sum = self.sums.sum(0)
        total_var = self.squares.sum(0) - total_sum.pow(2) / n
        counts = self.counts.unsqueeze(1)
        within = self.squares - self.sums.pow(2) / counts.clamp_min(1)
        in_sample = 1 - within.sum(0) / total_var
        repeated = counts >= 2
        inflation = (counts / (counts - 1).clamp_min(1)).pow(2)
        loo_error = torch.where(repeated, within * inflation, 0.0).sum(0)
        single = (self.counts == 1).unsqueeze(1)
        grand_mean = total_sum / n
        single_error = torch.where(
            single, self.squares - 2 * self.sums * grand_mean + grand_mean.pow(2), 0.0
        ).sum(0)
        loo = 1 - (loo_error + single_error) / total_var
        return in_sample, loo

    def pooled_share(self) -> tuple[float, float]:
        """(in-sample, leave-one-out) share of the summed variance of all columns."""
        n = self.counts.sum()
        total = (self.squares.sum(0) - self.sums.sum(0).pow(2) / n).sum()
        in_sample, loo = self.shares()
        per_column = self.squares.sum(0) - self.sums.sum(0).pow(2) / n
        weights = per_column / total
        return float((in_sample * weights).sum()), float((loo * weights).sum())

    def means(self) -> torch.Tensor:
        """Mean vector of each group (zeros for unseen groups)."""
        return (self.sums / self.counts.clamp_min(1).unsqueeze(1)).float()


class TokenIdentityAnalysis(Analysis):
    """Share of the activations, reconstruction and latents that is token identity."""

    name = "tokenized"
    title = "Token identity (tokenized SAEs)"
    description = (
        "variance explained by the current token, per SAE input, output, latent"
    )
    config_class = TokenIdentityConfig
    needs = frozenset({"activations"})

    def __init__(self, config: TokenIdentityConfig, context):
        super().__init__(config, context)
        sae = context.sae
        model = context.model
        vocab = model.cfg.d_vocab if model is not None else 1
        device = sae.W_dec.device
        self.inputs = GroupedMoments(vocab, sae.cfg.d_in, device)
        self.outputs = GroupedMoments(vocab, sae.cfg.d_in, device)
        self.latent_table = vocab * sae.cfg.d_sae <= config.max_latent_table
        self.latents = (
            GroupedMoments(vocab, sae.cfg.d_sae, device) if self.latent_table else None
        )
        self.sq_err = 0.0
        self.firings = torch.zeros(sae.cfg.d_sae, dtype=torch.float64, device=device)
        self.trainer = (
            online_trainer(config, context, vocab) if config.train_sae else None
        )

    def update(self, batch: ActivationBatch) -> None:
        """Accumulate per-token moments of inputs, outputs and latents."""
        tokens = batch.tokens.long()
        self.inputs.add(tokens, batch.sae_in)
        self.outputs.add(tokens, batch.sae_out)
        self.sq_err += (batch.sae_in - batch.sae_out).double().pow(2).sum().item()
        self.firings += (batch.feature_acts != 0).sum(0, dtype=torch.float64)
        if self.latents is not None:
            self.latents.add(tokens, batch.feature_acts)
        if self.trainer is not None:
            self.trainer.add(pack_tokens(batch.sae_in, tokens, previous_ids(batch)))

    def finish(self) -> AnalysisResult:
        """Shares, the per-latent table, a histogram and per-token mean activations."""
        input_in_sample, input_loo = self.inputs.pooled_share()
        _, output_loo = self.outputs.pooled_share()
        n = self.inputs.counts.sum()
        total_var = (
            self.inputs.squares.sum() - self.inputs.sums.sum(0).pow(2).sum() / n
        ).item()
        metrics = {
            "token_share_of_activations": input_loo,
            "token_share_of_activations_in_sample": input_in_sample,
            "token_share_of_reconstruction": output_loo,
            "sae_explained_variance": 1 - self.sq_err / total_var,
            "distinct_tokens": int((self.inputs.counts > 0).sum()),
        }
        tables, plots = {}, {}
        if self.latents is not None:
            latents = self._latent_table()
            counted = latents[latents.firings >= self.config.min_firings]
            token_like = counted.token_share >= self.config.token_latent_threshold
            metrics["token_like_latent_fraction"] = (
                float(token_like.mean()) if len(counted) else float("nan")
            )
            metrics["median_latent_token_share"] = (
                float(counted.token_share.median()) if len(counted) else float("nan")
            )
            tables["latents"] = latents
            plots["latent_token_share"] = share_histogram(counted, self.config)
        saes = {}
        if self.trainer is not None:
            saes["tokenized_sae"] = self.trainer.finish()
            curve = self.trainer.curve
            tables["tokenized_sae_curve"] = curve
            last = curve.iloc[-1]
            metrics["tokenized_sae_heldout_mse"] = float(last.mse)
            metrics["tokenized_sae_heldout_explained_variance"] = float(
                last.explained_variance
            )
            metrics["tokenized_sae_steps"] = int(self.trainer.trainer.n_training_steps)
            plots["tokenized_sae_curve"] = curve_plot(curve)
        return AnalysisResult(
            metrics=metrics,
            tables=tables,
            saes=saes,
            tensors={
                "token_mean_activations": self.inputs.means(),
                "token_counts": self.inputs.counts.float(),
            },
            plots=plots,
            card=card_text(metrics, self.config, self.latents is not None),
        )

    def _latent_table(self) -> pd.DataFrame:
        _, loo = self.latents.shares()
        mass = self.latents.sums
        top = mass.argmax(0)
        top_share = mass.max(0).values / mass.sum(0).clamp_min(1e-12)
        table = pd.DataFrame(
            {
                "latent": range(len(loo)),
                "firings": self.firings.cpu().numpy(),
                "token_share": loo.nan_to_num(0.0).clamp(-1, 1).cpu().numpy(),
                "top_token": top.cpu().numpy(),
                "top_token_activation_share": top_share.cpu().numpy(),
            }
        )
        tokenizer = self.context.tokenizer
        if tokenizer is not None:
            table["top_token_text"] = [
                tokenizer.decode([int(t)]) for t in table.top_token
            ]
        return table


def online_trainer(config: TokenIdentityConfig, context, vocab: int):
    """The streaming trainer of the tokenized SAE, sized like the analysed SAE."""
    sae = context.sae
    meta = sae.cfg.metadata
    options = TrainingOptions(
        d_sae=config.d_sae or sae.cfg.d_sae,
        k=config.k or getattr(sae.cfg, "k", None) or 32,
        pair_buckets=config.pair_buckets,
        batch_size=config.batch_size,
        lr=config.lr,
        lookup_lr=None,
        device=context.device,
        autocast=config.bf16,
    )
    metadata = {
        "model_name": meta.model_name,
        "hook_name": context.hook_name or meta.hook_name,
        "context_size": meta.context_size,
        "prepend_bos": meta.prepend_bos,
        "dataset_path": context.dataset or meta.dataset_path,
    }
    return OnlineTokenizedTrainer(
        options, sae.cfg.d_in, vocab, metadata, config.buffer_rows, context.seed
    )


def previous_ids(batch: ActivationBatch) -> torch.Tensor:
    """The token before each row (``NO_PREVIOUS`` at position 0)."""
    seq, pos = batch.positions[:, 0].long(), batch.positions[:, 1].long()
    prev = batch.token_context[seq, (pos - 1).clamp_min(0)].long()
    return torch.where(pos > 0, prev, torch.full_like(prev, NO_PREVIOUS))


def curve_plot(curve: pd.DataFrame) -> Figure:
    """Progressive-validation MSE of the tokenized SAE against training steps."""
    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    ax.plot(curve.step, curve.mse, "o-", markersize=3)
    ax.set_yscale("log")
    ax.set_xlabel("training steps before the buffer")
    ax.set_ylabel("MSE on the next, unseen buffer")
    ax.set_title("tokenized SAE trained in the run")
    fig.tight_layout()
    return fig


def share_histogram(latents: pd.DataFrame, config: TokenIdentityConfig) -> Figure:
    """Histogram of per-latent token shares, the threshold marked."""
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.hist(latents.token_share.clip(0, 1), bins=40, color="#3b6ea5")
    ax.axvline(config.token_latent_threshold, color="grey", linestyle="--")
    ax.set_xlabel("share of latent variance explained by the current token")
    ax.set_ylabel("latents")
    ax.set_title(f"{len(latents)} latents firing >= {config.min_firings} times")
    fig.tight_layout()
    return fig


def card_text(metrics: dict, config: TokenIdentityConfig, per_latent: bool) -> str:
    """The model-card section."""
    text = (
        f"The current token alone explains **{metrics['token_share_of_activations']:.1%}"
        f"** of the activations' variance (leave-one-out; "
        f"{metrics['token_share_of_activations_in_sample']:.1%} in sample) and "
        f"{metrics['token_share_of_reconstruction']:.1%} of the SAE reconstruction's; "
        f"the SAE explains {metrics['sae_explained_variance']:.1%}. "
    )
    if per_latent:
        text += (
            f"{metrics['token_like_latent_fraction']:.1%} of latents firing at least "
            f"{config.min_firings} times are token-like (token share >= "
            f"{config.token_latent_threshold:g}): capacity a tokenized SAE's "
            "lookup table would free. "
        )
    else:
        text += "Per-latent shares were skipped (vocab x d_sae over max_latent_table). "
    if "tokenized_sae_heldout_mse" in metrics:
        text += (
            f"A tokenized TopK SAE trained in this run for "
            f"{metrics['tokenized_sae_steps']} steps (saved as `tokenized_sae`) "
            f"reaches MSE {metrics['tokenized_sae_heldout_mse']:.4g} and explained "
            f"variance {metrics['tokenized_sae_heldout_explained_variance']:.1%} on "
            "rows it had not yet trained on. "
        )
    return text + (
        "Method: Dooms & Wilhelm 2024, Tokenized SAEs; per-token means are saved "
        "as `token_mean_activations`, the table initialisation of a tokenized SAE."
    )
