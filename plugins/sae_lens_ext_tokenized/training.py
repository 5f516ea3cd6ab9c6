"""Train a tokenized SAE (or its plain baseline) with SAE-Lens's ``SAETrainer``.

The trainer gets a generator of packed batches (activations + token columns
+ upstream activations for an upstream lookup, see :func:`~.keys.pack_tokens`)
and runs unchanged; this module adds the table initialisation, the tables'
own learning rate, and a held-out learning curve recorded through the
trainer's public ``step``.
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
    UPSTREAM_INIT_METHODS,
    init_b_dec_to_mean,
    init_tables_from_means,
    init_tables_from_unigrams,
    init_upstream_table,
)
from .upstream import LOOKUPS, UPSTREAM_KEYS

LOOKUP_PARAMETERS = ("W_lookup", "W_pair_lookup", "W_upstream_lookup")


@dataclass
class TrainingOptions:
    """Settings of :func:`train_tokenized_sae` (shared by both arms of a comparison).

    ``tokenized=False`` trains SAE-Lens's own TopK/ReLU/JumpReLU SAE with the
    same settings, data order and initial weights: the baseline.  ``lookup``
    picks the tables (``"token"``, ``"upstream_sae"``, ``"both"``);
    ``upstream`` names the upstream SAE as ``"<release>/<id>"`` (anything
    ``sae_lens_ext.load_sae`` resolves) or a loaded SAE-Lens SAE (then
    ``upstream_reference`` is what the saved config records).  ``lookup_lr``
    is the tables' learning rate (None: ``lr``); the paper uses 0.01 for the
    table against 1e-4 for the rest.
    """

    d_sae: int = 1024
    k: int = 16
    base_architecture: str = "topk"
    l1_coefficient: float = 1.0
    l0_coefficient: float = 1.0
    tokenized: bool = True
    lookup: str = "token"
    upstream: object = None
    upstream_reference: str | None = None
    upstream_key: str = "codes"
    upstream_init: str = "lstsq"
    pair_buckets: int = 0
    apply_lookup_to_input: bool = False
    init: str = "unigram"
    init_scale: float | None = None
    init_shrinkage: float = 0.0
    init_tokens: int = 65_536
    steps: int = 2000
    batch_size: int = 512
    lr: float = 1e-3
    lookup_lr: float | None = 0.01
    eval_every: int = 100
    eval_fraction: float = 0.1
    seed: int = 0
    device: str = "cpu"
    autocast: bool = False

    def __post_init__(self):
        for name, choices in (
            ("init", INIT_METHODS),
            ("lookup", LOOKUPS),
            ("upstream_key", UPSTREAM_KEYS),
            ("upstream_init", UPSTREAM_INIT_METHODS),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"{name}={getattr(self, name)!r}; choose one of {list(choices)}"
                )
        if self.tokenized and self.lookup != "token" and self.upstream is None:
            raise ValueError(
                f"lookup={self.lookup!r} needs the upstream SAE: set upstream="
                "'<release>/<id>' (command line: --upstream RELEASE/ID)"
            )
        if self.lookup_lr is not None and not self.lookup_lr > 0:
            raise ValueError(
                f"lookup_lr must be positive or None, got {self.lookup_lr}"
            )
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
    upstream = resolve_upstream(options, model, hook_name)
    upstream_hook = upstream[0].cfg.metadata.hook_name if upstream else None
    train_tokens, eval_tokens = split_held_out(tokens, eval_tokens, options)
    torch.manual_seed(options.seed)
    sae = build_training_sae(
        model, hook_name, options, context=tokens.shape[1], upstream=upstream
    )
    init_rows = packed_rows(
        model,
        hook_name,
        train_tokens[: _n_seqs(options.init_tokens, tokens)],
        upstream_hook,
    )
    init_weights(sae, init_rows, model, hook_name, options)
    eval_rows = packed_rows(model, hook_name, eval_tokens, upstream_hook)

    batches = shuffled_batches(
        model,
        hook_name,
        train_tokens,
        options.batch_size,
        seed=options.seed,
        upstream_hook=upstream_hook,
    )
    if not options.tokenized:  # the baseline reads the same rows, keys dropped
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


def resolve_upstream(options: TrainingOptions, model, hook_name: str):
    """``(upstream SAE, release, sae_id)`` for an upstream lookup, else None.

    Fails before any training when the upstream SAE cannot be loaded, does
    not fit the model, or sits at a hook that does not run before ``hook_name``.
    """
    from .capture import check_hook_order
    from .upstream import freeze, parse_upstream

    if not options.tokenized or options.lookup == "token":
        return None
    if isinstance(options.upstream, str):
        from sae_lens_ext import load_sae

        release, sae_id = parse_upstream(options.upstream)
        upstream_sae = load_sae(release, sae_id, device=options.device)
    else:
        upstream_sae = options.upstream
        reference = options.upstream_reference
        if reference is None:
            raise ValueError(
                "an upstream SAE passed as an object needs upstream_reference="
                "'<release>/<id>' so the saved SAE can load it back"
            )
        release, sae_id = parse_upstream(reference)
    upstream_hook = upstream_sae.cfg.metadata.hook_name
    check_hook_order(model, upstream_hook, hook_name)
    return freeze(upstream_sae), release, sae_id


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


def build_training_sae(
    model, hook_name: str, options: TrainingOptions, context: int, upstream=None
):
    """A fresh training SAE for ``model``'s ``hook_name``, its metadata set.

    ``upstream`` is :func:`resolve_upstream`'s ``(sae, release, sae_id)``.
    """
    sae = new_training_sae(options, model.cfg.d_model, model.cfg.d_vocab, upstream)
    metadata = sae.cfg.metadata
    metadata.model_name = model.cfg.model_name
    metadata.hook_name = hook_name
    metadata.context_size = context
    metadata.prepend_bos = True
    return sae


def new_training_sae(
    options: TrainingOptions, d_in: int, vocab_size: int, upstream=None
):
    """A fresh training SAE: tokenized, or SAE-Lens's plain one for the baseline.

    ``upstream`` (``(sae, release, sae_id)``) is needed for an upstream lookup.
    """
    import sae_lens

    from .sae import TokenizedTrainingSAE, TokenizedTrainingSAEConfig
    from .upstream import upstream_fields

    common = dict(d_in=d_in, d_sae=options.d_sae, device=options.device)
    base = {
        "topk": dict(k=options.k),
        "standard": dict(l1_coefficient=options.l1_coefficient),
        "jumprelu": dict(l0_coefficient=options.l0_coefficient),
    }[options.base_architecture]
    if not options.tokenized:
        prefix = {"topk": "TopK", "standard": "Standard", "jumprelu": "JumpReLU"}[
            options.base_architecture
        ]
        sae_class = getattr(sae_lens, f"{prefix}TrainingSAE")
        cfg_class = getattr(sae_lens, f"{prefix}TrainingSAEConfig")
        return sae_class(cfg_class(**common, **base))
    upstream_cfg = {}
    if options.lookup != "token":
        upstream_cfg = upstream_fields(*upstream)
        upstream_cfg["upstream_key"] = options.upstream_key
    cfg = TokenizedTrainingSAEConfig(
        **common,
        **base,
        base_architecture=options.base_architecture,
        vocab_size=vocab_size,
        pair_buckets=options.pair_buckets,
        apply_lookup_to_input=options.apply_lookup_to_input,
        lookup=options.lookup,
        **upstream_cfg,
    )
    sae = TokenizedTrainingSAE(cfg)
    if upstream_cfg:
        sae.attach_upstream(upstream[0])
    return sae


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
    if options.tokenized and options.lookup_lr not in (None, options.lr):
        set_lookup_lr(trainer, options.lookup_lr)
    return trainer


def init_weights(sae, rows, model, hook_name: str, options: TrainingOptions) -> None:
    """``b_dec`` at the mean activation (both arms), then the token tables,
    then the upstream table on what they leave."""
    init_b_dec_to_mean(sae, rows)
    if not options.tokenized:
        return
    if options.lookup == "upstream_sae":
        pass  # no token table: b_dec stays at the mean
    elif options.init == "mean":
        init_tables_from_means(
            sae, rows, scale=options.init_scale or 1.0, shrinkage=options.init_shrinkage
        )
    elif options.init == "unigram":
        init_tables_from_unigrams(
            sae, model, hook_name, scale=options.init_scale or 0.5
        )
        with torch.no_grad():
            sae.b_dec.zero_()
    if options.lookup != "token" and options.upstream_init == "lstsq":
        init_upstream_table(sae, rows)


def set_lookup_lr(trainer, lookup_lr: float) -> None:
    """Give the lookup tables their own learning rate ``lookup_lr``.

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
        [{"params": rest}, {"params": tables, "lr": lookup_lr}],
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
                "lower lr or lookup_lr"
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
