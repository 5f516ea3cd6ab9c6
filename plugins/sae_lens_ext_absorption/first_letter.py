"""First-letter absorption rate (Chanin et al. 2024; SAEBench's protocol).

On a sample of alphabetic-token rows, split by distinct token into train
and test vocabularies:

1. a class-balanced logistic probe per letter on the SAE input ("token
   starts with L"), the ground truth;  fitted exactly by default, or trained
   as SAEBench trains it with ``probe_training="saebench"``
   (:mod:`.saebench_probes`, which also covers step 2's probes);
2. k-sparse probing on the SAE codes: an L1 probe ranks the latents, then a
   probe on the top-k latents is fitted for k = 1..max_k; the *main latents*
   of a letter are the top-k for the last k whose test F1 beats the best
   smaller k by ``f1_jump`` (feature splitting grows k);
3. on every test row of letter L that the ground-truth probe calls positive,
   :func:`.scoring.absorption_scores` with the unit probe direction: the
   *absorption rate* is the fraction of those rows fully absorbed (no main
   latent fires and one probe-aligned latent carries the projection) and the
   *absorption fraction* SAEBench's mean partial absorption.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pandas as pd
import torch

from .config import AbsorptionConfig
from .discrepancy import decoder_code_map
from .letters import LETTERS, LetterRows, LettersUnavailable
from .probes import LinearProbes, f1_scores, fit_probes, fit_sparse_probes, l1_ranking
from .saebench_probes import (
    GROUND_TRUTH_SCHEDULE,
    DenseInputs,
    SlotInputs,
    fit_sklearn_sparse_probes,
    saebench_ranking,
    train_adam_probes,
)
from .scoring import absorption_scores

# LBFGS iterations of the ground-truth probes (fitted in whitened
# coordinates, see probes._fit_shared): on the demo, 30 reach the converged
# probes (2000 allowed) to cosine 1.0000 for every letter, test F1 within 4e-4
GROUND_TRUTH_ITERATIONS = 30
MIN_TRAIN_POSITIVES = 8
MIN_TEST_POSITIVES = 4
N_EXAMPLES = 5


@dataclass
class FirstLetterResult:
    """Per-letter probes, main latents and absorption; per-row absorptions;
    the ground-truth probes, one per line of ``letters`` (on the raw input
    or ``x - decode(0)``, see ``subtract_b_dec``)."""

    letters: pd.DataFrame
    rows: pd.DataFrame
    metrics: dict[str, float]
    probes: LinearProbes | None = None


def first_letter_absorption(
    sample: LetterRows,
    sae,
    config: AbsorptionConfig,
    *,
    seed: int = 0,
    token_text=None,
    split: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> FirstLetterResult:
    """Probe, find main latents, and score absorption per letter.

    ``token_text(token_id) -> str`` names the absorbed tokens in the tables.
    ``split`` gives the train and test row indices (default: a random split
    by distinct token, ``config.test_fraction`` held out, drawn from ``seed``).
    """
    w_dec = sae.W_dec.detach().float().cpu()
    d_sae = w_dec.shape[0]
    decoding = decoder_code_map(sae)
    if split is None:
        split = _split_by_token(sample.tokens, config.test_fraction, seed)
    train, test = split
    labels = torch.nn.functional.one_hot(sample.letters, len(LETTERS)).bool()
    usable = (labels[train].sum(0) >= MIN_TRAIN_POSITIVES) & (
        labels[test].sum(0) >= MIN_TEST_POSITIVES
    )
    letters = usable.nonzero()[:, 0]
    if letters.numel() == 0:
        most = labels.sum(0).max().item()
        raise LettersUnavailable(
            f"too few labelled tokens per letter for the probes: no letter has "
            f"{MIN_TRAIN_POSITIVES} train and {MIN_TEST_POSITIVES} test rows (the "
            f"most frequent letter has {most} of the {len(sample.tokens)} sampled "
            "rows); raise letter_rows or the number of tokens"
        )
    labels = labels[:, letters]
    # decode(0): b_dec, moved by the output normalisation where there is one
    # (on the SAE's device; the letter sample and its probes live on the CPU)
    zero_code = decoding.zero_code(sample.sae_in.to(sae.W_dec.device)).float().cpu()
    x = sample.sae_in - zero_code if config.subtract_b_dec else sample.sae_in
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    if config.probe_training == "saebench":
        probes = train_adam_probes(
            DenseInputs(x[train]), labels[train], GROUND_TRUTH_SCHEDULE, generator
        )
        ranked = saebench_ranking(
            SlotInputs(sample.code_latents[train], sample.code_values[train], d_sae),
            labels[train],
            config.max_k,
            config.sparse_probe_epochs,
            generator,
        )
        fit_sparse = fit_sklearn_sparse_probes
    else:
        probes = fit_probes(x[train], labels[train], max_iter=GROUND_TRUTH_ITERATIONS)
        ranked = _l1_ranked(sample, labels, train, config.max_k, config.l1_penalty)
        fit_sparse = fit_sparse_probes
    probe_positive = probes.logits(x[test]) > 0
    probe_f1 = f1_scores(probe_positive, labels[test])

    main_latents, sparse_f1, k_chosen = _k_sparse_main_latents(
        sample, d_sae, ranked, labels, train, test, config.f1_jump, fit_sparse
    )

    directions = probes.directions()
    unit_dec = w_dec / w_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cosines = unit_dec @ directions.T  # [d_sae, n_letters]
    # contributions: activation x row output scale x length of its decoder row
    scale = decoding.row_scale(sample.sae_in)
    lengths = sample
    if scale is not None:
        lengths = replace(sample, code_values=sample.code_values * scale[:, None])
    records, row_records = [], []
    for column, letter in enumerate(letters.tolist()):
        rows = test[labels[test, column] & probe_positive[:, column]]
        scored = _score_rows(
            lengths,
            rows,
            x,
            directions[column],
            cosines[:, column],
            decoding.row_norms.float().cpu(),
            main_latents[column],
            config,
        )
        records.append(
            {
                "letter": LETTERS[letter],
                "n_train": int(labels[train, column].sum()),
                "n_test": int(labels[test, column].sum()),
                "probe_f1": float(probe_f1[column]),
                "main_latents": ", ".join(map(str, main_latents[column])),
                "k": k_chosen[column],
                "sparse_f1": sparse_f1[column],
                "probe_true_positives": int(rows.numel()),
                "absorption_rate": scored["full"].float().mean().item()
                if rows.numel()
                else float("nan"),
                "absorption_fraction": scored["fraction"].mean().item()
                if rows.numel()
                else float("nan"),
                **_absorbers(scored, sample, cosines[:, column], token_text),
            }
        )
        row_records.append(_row_table(LETTERS[letter], scored, sample, token_text))
    table = pd.DataFrame(records)
    return FirstLetterResult(
        table,
        pd.concat(row_records, ignore_index=True),
        _metrics(table, config),
        probes,
    )


def _split_by_token(tokens, test_fraction, seed):
    """Row indices of train and test, no token in both."""
    distinct = tokens.unique()
    generator = torch.Generator().manual_seed(seed)
    shuffled = distinct[torch.randperm(len(distinct), generator=generator)]
    n_test = max(1, int(round(test_fraction * len(distinct))))
    is_test = torch.isin(tokens, shuffled[:n_test])
    return (~is_test).nonzero()[:, 0], is_test.nonzero()[:, 0]


def _l1_ranked(sample, labels, train, max_k, l1):
    """Per letter, ``[p, K]`` latent ids ranked by our exact L1 probe."""
    present, codes = present_codes(sample, train)
    return present[l1_ranking(codes, labels[train], l1=l1, max_k=max_k)]


def _k_sparse_main_latents(sample, d_sae, ranked, labels, train, test, f1_jump, fit):
    """Per letter: main latents, their test F1 and k, by SAEBench's F1-jump
    rule, over the ``ranked`` ``[p, K]`` latents (best first), each k-sparse
    probe fitted by ``fit`` (:func:`.probes.fit_sparse_probes` or SAEBench's)."""
    n_letters = labels.shape[1]
    candidates, columns = ranked.unique(return_inverse=True)
    compact = candidate_codes(sample, candidates, d_sae)  # [r, C]
    best_k = torch.ones(n_letters, dtype=torch.long)
    best_f1 = _sparse_f1(compact, columns[:, :1], labels, train, test, fit)
    growing = torch.ones(n_letters, dtype=torch.bool)
    for k in range(2, ranked.shape[1] + 1):
        # only letters whose F1 jumped at k - 1 are probed further
        active = growing.nonzero()[:, 0]
        if active.numel() == 0:
            break
        f1 = _sparse_f1(
            compact, columns[active, :k], labels[:, active], train, test, fit
        )
        jumped = f1 > best_f1[active] + f1_jump
        best_k[active[jumped]] = k
        best_f1[active[jumped]] = f1[jumped]
        growing[active[~jumped]] = False
    main = [ranked[p, : best_k[p]].tolist() for p in range(n_letters)]
    return main, best_f1.tolist(), best_k.tolist()


def present_codes(sample: LetterRows, rows: torch.Tensor):
    """The latents firing on ``rows`` and their codes as a sparse ``[r, p]``."""
    present = sample.code_latents[rows].unique()
    present = present[present >= 0]
    row, column, value = sample.code_entries(rows, present)
    codes = torch.sparse_coo_tensor(
        torch.stack([row, column]),
        value,
        (len(rows), len(present)),
        check_invariants=False,
    )
    return present, codes


def _sparse_f1(compact, chosen, labels, train, test, fit) -> torch.Tensor:
    """Test F1 of probes on the chosen latents (``chosen`` is ``[p, k]``)."""
    x_train = compact[train][:, chosen].permute(1, 0, 2)
    x_test = compact[test][:, chosen].permute(1, 0, 2)
    probes = fit(x_train, labels[train])
    logits = torch.einsum("pnf,pf->np", x_test, probes.weight) + probes.bias
    return f1_scores(logits > 0, labels[test])


def candidate_codes(sample: LetterRows, candidates: torch.Tensor, d_sae: int):
    """Dense ``[r, len(candidates)]`` activations of a few latents on every row."""
    column_of = torch.full((d_sae + 1,), -1, dtype=torch.long)
    column_of[candidates] = torch.arange(len(candidates))
    columns = column_of[sample.code_latents]  # -1 latents map to slot d_sae: -1
    hit = columns >= 0
    out = torch.zeros(len(columns), len(candidates) + 1)
    out.scatter_(1, torch.where(hit, columns, len(candidates)), sample.code_values)
    return out[:, :-1]


def _score_rows(sample, rows, x, direction, cosines, dec_norm, main, config):
    """Absorption of one letter's probe direction on its probe-positive rows."""
    latents = sample.code_latents[rows]
    values = sample.code_values[rows]
    safe = latents.clamp_min(0)
    used = latents >= 0
    is_main = torch.isin(latents, torch.tensor(main, dtype=latents.dtype)) & used
    contribution = torch.where(used, values * dec_norm[safe] * cosines[safe], 0.0)
    other = used & ~is_main
    scores = absorption_scores(
        x[rows] @ direction,
        torch.where(is_main, contribution, 0.0).sum(1),
        (is_main & (values > 0)).any(1),
        torch.where(other, contribution, 0.0),
        torch.where(other, cosines[safe], 0.0),
        share_threshold=config.share_threshold,
        cos_threshold=config.absorber_cos_threshold,
    )
    top_slot = scores.top_slot.clamp_min(0)
    top_latent = latents.gather(1, top_slot[:, None])[:, 0]
    return {
        "rows": rows,
        "fraction": scores.fraction,
        "full": scores.full,
        "top_latent": torch.where(scores.top_slot >= 0, top_latent, -1),
        "top_share": scores.top_share,
    }


def _absorbers(scored, sample, cosines, token_text) -> dict:
    """The latents that most often fully absorb the letter, and example tokens."""
    full = scored["full"]
    latents = scored["top_latent"][full]
    if latents.numel() == 0:
        return {"absorbing_latents": "", "absorber_probe_cos": "", "examples": ""}
    found, counts = latents.unique(return_counts=True)
    order = counts.argsort(descending=True)[:3]
    found = found[order]
    tokens = sample.tokens[scored["rows"][full]]
    examples = []
    for token, latent in zip(tokens.tolist(), latents.tolist(), strict=True):
        text = token_text(token) if token_text else str(token)
        entry = f"{text!r}->{latent}"
        if entry not in examples:
            examples.append(entry)
        if len(examples) == N_EXAMPLES:
            break
    return {
        "absorbing_latents": ", ".join(map(str, found.tolist())),
        "absorber_probe_cos": ", ".join(f"{c:.2f}" for c in cosines[found].tolist()),
        "examples": " ".join(examples),
    }


def _row_table(letter, scored, sample, token_text) -> pd.DataFrame:
    """One line per scored test row."""
    tokens = sample.tokens[scored["rows"]].tolist()
    return pd.DataFrame(
        {
            "letter": letter,
            "token": tokens,
            "text": [token_text(t) if token_text else "" for t in tokens],
            "absorption_fraction": scored["fraction"].numpy(),
            "full_absorption": scored["full"].numpy(),
            "top_latent": scored["top_latent"].numpy(),
            "top_share": scored["top_share"].numpy(),
        }
    )


def _metrics(table: pd.DataFrame, config: AbsorptionConfig) -> dict[str, float]:
    """Means over letters whose ground-truth probe is good enough."""
    good = table[
        (table["probe_f1"] >= config.min_probe_f1) & (table["probe_true_positives"] > 0)
    ]
    return {
        "letters_evaluated": int(len(good)),
        "letters_probed": int(len(table)),
        "mean_probe_f1": float(table["probe_f1"].mean()),
        "mean_absorption_rate": float(good["absorption_rate"].mean())
        if len(good)
        else float("nan"),
        "mean_absorption_fraction": float(good["absorption_fraction"].mean())
        if len(good)
        else float("nan"),
        "mean_main_latents": float(good["k"].mean()) if len(good) else float("nan"),
    }
