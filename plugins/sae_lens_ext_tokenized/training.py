"""Train a tokenized SAE (or its plain baseline) with SAE-Lens's ``SAETrainer``.

The trainer gets a generator of packed batches (activations + token columns,
see :func:`~.keys.pack_tokens`) and runs unchanged; this module adds the
table initialisation, an optional higher learning rate for the tables, and a
held-out learning curve recorded through the trainer's public ``step``.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from .data import load_tokens, packed_rows, shuffled_batches
from .evaluation import reconstruction_metrics
from .lookup_init import (
    INIT_METHODS,
    init_b_dec_to_mean,
    init_tables_from_means,
    init_tables_from_unigrams,
)

LOOKUP_PARAMETERS = ("W_lookup", "W_pair_lookup")


@dataclass
class TrainingOptions:
    """Settings of :func:`train_tokenized_sae` (shared by both arms of a comparison).

    ``tokenized=False`` trains SAE-Lens's own TopK/ReLU SAE with the same
    settings, data order and initial weights: the baseline.
    """

    d_sae: int = 1024
    k: int = 16
    base_architecture: str = "topk"
    l1_coefficient: float = 1.0
    tokenized: bool = True
    pair_buckets: int = 0
    apply_lookup_to_input: bool = False
    init: str = "mean"
    init_scale: float | None = None
    init_shrinkage: float = 0.0
    init_tokens: int = 65_536
    steps: int = 2000
    batch_size: int = 512
    lr: float = 1e-3
    lookup_lr_multiplier: float = 1.0
    eval_every: int = 100
    eval_fraction: float = 0.1
    seed: int = 0
    device: str = "cpu"
    autocast: bool = False

    def __post_init__(self):
        if self.init not in INIT_METHODS:
            raise ValueError(f"init={self.init!r}; choose one of {list(INIT_METHODS)}")
        for name in ("d_sae", "k", "steps", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.eval_fraction < 1:
            raise ValueError("eval_fraction must be in (0, 1)")


@dataclass
class TrainedSAE:
    """The result of one training run."""

    sae: object
    curve: pd.DataFrame
    metrics: dict = field(default_factory=dict)
    saved_to: Path | None = None
    eval_tokens: torch.Tensor | None = None


def train_tokenized_sae(
    model,
    hook_name: str,
    dataset,
    options: TrainingOptions | None = None,
    *,
    eval_tokens: torch.Tensor | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    **overrides,
) -> TrainedSAE:
    """Train a tokenized SAE on ``model``'s ``hook_name`` activations.

    ``dataset`` is a ``[n_seq, ctx]`` tensor of token ids or a
    ``.safetensors``/``.txt`` file.  Held-out sequences (``eval_tokens``, or
    the last ``eval_fraction`` of the dataset) give the learning curve.
    Keyword overrides set :class:`TrainingOptions` fields.  With ``out_dir``
    the inference SAE is saved there in SAE-Lens format (``cfg.json`` +
    ``sae_weights.safetensors``), ready for ``SAE.load_from_disk`` or
    ``sae_lens_ext.push_to_hub``.
    """
    options = options or TrainingOptions()
    if overrides:
        options = TrainingOptions(**{**options.__dict__, **overrides})
    model.eval()
    tokens = load_tokens(dataset, model)
    train_tokens, eval_tokens = split_held_out(tokens, eval_tokens, options)
    torch.manual_seed(options.seed)
    sae = build_training_sae(model, hook_name, options, context=tokens.shape[1])
    init_rows = packed_rows(
        model, hook_name, train_tokens[: _n_seqs(options.init_tokens, tokens)]
    )
    init_weights(sae, init_rows, model, hook_name, options)
    eval_rows = packed_rows(model, hook_name, eval_tokens)

    batches = shuffled_batches(
        model, hook_name, train_tokens, options.batch_size, seed=options.seed
    )
    if not options.tokenized:  # the baseline reads the same rows, tokens dropped
        batches = (batch[:, : model.cfg.d_model] for batch in batches)
    trainer = make_trainer(sae, options, batches)
    curve = run_steps(trainer, batches, eval_rows, options, progress)
    trainer.set_final_sae_metadata()
    inference = to_inference(sae, out_dir)
    final = curve.iloc[-1].to_dict()
    return TrainedSAE(
        sae=inference,
        curve=curve,
        metrics={k: final[k] for k in ("mse", "explained_variance", "l0")},
        saved_to=Path(out_dir) if out_dir else None,
        eval_tokens=eval_tokens,
    )


def split_held_out(tokens, eval_tokens, options: TrainingOptions):
    """Training and held-out sequences (the last ``eval_fraction`` by default)."""
    if eval_tokens is not None:
        return tokens, eval_tokens.long()
    n_eval = max(1, round(len(tokens) * options.eval_fraction))
    if n_eval >= len(tokens):
        raise ValueError(
            f"the dataset has {len(tokens)} sequences, too few to hold "
            f"{n_eval} out for evaluation; pass more sequences or eval_tokens"
        )
    return tokens[:-n_eval], tokens[-n_eval:]


def build_training_sae(model, hook_name: str, options: TrainingOptions, context: int):
    """A fresh training SAE for ``model``'s ``hook_name``, its metadata set."""
    sae = new_training_sae(options, model.cfg.d_model, model.cfg.d_vocab)
    metadata = sae.cfg.metadata
    metadata.model_name = model.cfg.model_name
    metadata.hook_name = hook_name
    metadata.context_size = context
    metadata.prepend_bos = True
    return sae


def new_training_sae(options: TrainingOptions, d_in: int, vocab_size: int):
    """A fresh training SAE: tokenized, or SAE-Lens's plain one for the baseline."""
    from sae_lens import (
        StandardTrainingSAE,
        StandardTrainingSAEConfig,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )

    from .sae import TokenizedTrainingSAE, TokenizedTrainingSAEConfig

    common = dict(d_in=d_in, d_sae=options.d_sae, device=options.device)
    if options.base_architecture == "topk":
        base = dict(k=options.k)
    else:
        base = dict(l1_coefficient=options.l1_coefficient)
    if options.tokenized:
        cfg = TokenizedTrainingSAEConfig(
            **common,
            **base,
            base_architecture=options.base_architecture,
            vocab_size=vocab_size,
            pair_buckets=options.pair_buckets,
            apply_lookup_to_input=options.apply_lookup_to_input,
        )
        return TokenizedTrainingSAE(cfg)
    if options.base_architecture == "topk":
        return TopKTrainingSAE(TopKTrainingSAEConfig(**common, **base))
    return StandardTrainingSAE(StandardTrainingSAEConfig(**common, **base))


def make_trainer(sae, options: TrainingOptions, batches):
    """SAE-Lens's ``SAETrainer`` for ``options`` (constant learning rate)."""
    from sae_lens import SAETrainer
    from sae_lens.config import SAETrainerConfig

    trainer_cfg = SAETrainerConfig(
        total_training_samples=options.steps * options.batch_size,
        train_batch_size_samples=options.batch_size,
        lr=options.lr,
        lr_end=options.lr,
        lr_decay_steps=options.steps // 5,
        device=options.device,
        autocast=options.autocast,
        dead_feature_window=max(50, options.steps // 10),
        feature_sampling_window=max(100, options.steps // 5),
    )
    trainer = SAETrainer(trainer_cfg, sae, batches)
    if options.tokenized and options.lookup_lr_multiplier != 1.0:
        scale_lookup_lr(trainer, options.lookup_lr_multiplier)
    return trainer


def init_weights(sae, rows, model, hook_name: str, options: TrainingOptions) -> None:
    """``b_dec`` at the mean activation (both arms), then the tables."""
    init_b_dec_to_mean(sae, rows)
    if not options.tokenized:
        return
    if options.init == "mean":
        init_tables_from_means(
            sae, rows, scale=options.init_scale or 1.0, shrinkage=options.init_shrinkage
        )
    elif options.init == "unigram":
        init_tables_from_unigrams(
            sae, model, hook_name, scale=options.init_scale or 0.5
        )
        with torch.no_grad():
            sae.b_dec.zero_()


def scale_lookup_lr(trainer, multiplier: float) -> None:
    """Give the lookup tables ``multiplier`` times the trainer's learning rate.

    Rebuilds the trainer's Adam optimiser with two parameter groups and its
    schedule with SAE-Lens's ``get_lr_scheduler`` (whose factors apply to
    each group's own rate).  Call before the first step.
    """
    from sae_lens.training.optim import get_lr_scheduler

    cfg = trainer.cfg
    named = dict(trainer.sae.named_parameters())
    tables = [p for name, p in named.items() if name in LOOKUP_PARAMETERS]
    rest = [p for name, p in named.items() if name not in LOOKUP_PARAMETERS]
    trainer.optimizer = torch.optim.Adam(
        [{"params": rest}, {"params": tables, "lr": cfg.lr * multiplier}],
        lr=cfg.lr,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
    )
    trainer.lr_scheduler = get_lr_scheduler(
        cfg.lr_scheduler_name,
        lr=cfg.lr,
        optimizer=trainer.optimizer,
        warm_up_steps=cfg.lr_warm_up_steps,
        decay_steps=cfg.lr_decay_steps,
        training_steps=cfg.total_training_steps,
        lr_end=cfg.lr_end,
        num_cycles=cfg.n_restart_cycles,
    )


def run_steps(trainer, batches, eval_rows, options: TrainingOptions, progress: bool):
    """Step the trainer, evaluating on held-out rows every ``eval_every`` steps."""
    records = [_evaluate(trainer, eval_rows, 0)]
    for step in tqdm(
        range(1, options.steps + 1), desc="training SAE", disable=not progress
    ):
        trainer.maybe_reset_sparsity()
        output = trainer.step(next(batches))
        trainer.n_training_steps += 1
        if not math.isfinite(output.loss.item()):
            raise RuntimeError(
                f"training diverged at step {step} (loss {output.loss.item()}); "
                "lower lr or lookup_lr_multiplier"
            )
        if step % options.eval_every == 0 or step == options.steps:
            records.append(_evaluate(trainer, eval_rows, step))
    return pd.DataFrame(records)


def _evaluate(trainer, eval_rows, step: int) -> dict:
    metrics = reconstruction_metrics(trainer.sae, eval_rows)
    return {"step": step, "samples": trainer.n_training_samples, **metrics}


def to_inference(sae, out_dir: str | Path | None):
    """The inference SAE of a training SAE, saved to ``out_dir`` if given, on
    the training SAE's device (read on the CPU, then moved)."""
    from sae_lens import SAE

    device = sae.W_dec.device
    if out_dir is not None:
        sae.save_inference_model(out_dir)
        return SAE.load_from_disk(out_dir).to(device)
    with tempfile.TemporaryDirectory() as tmp:
        sae.save_inference_model(tmp)
        return SAE.load_from_disk(tmp).to(device)


def _n_seqs(n_tokens: int, tokens: torch.Tensor) -> int:
    return max(1, math.ceil(n_tokens / (tokens.shape[1] - 1)))
