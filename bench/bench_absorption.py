"""Benchmark the absorption plugin against a straightforward dense implementation.

SAEBench's own absorption evaluation cannot run here (see docs/absorption.md),
so the peer is written below the way one would without streaming: keep every
activation, take exact top-N per latent, score each input in a Python loop
(as SAEBench's calculator does), and fit every probe with scikit-learn.  Both
sides get the same activations of the demo model (the model pass is not
timed) and the same labelled rows and train/test split.
The sides take turns for ``--repeats`` rounds; times are medians with the
min-max range and speed-ups medians of the round-by-round ratios
(``bench/timing.py``; ``--json FILE`` saves them).

    python bench/bench_absorption.py                 # demo resid0-topk-1024, 65536 tokens
    python bench/bench_absorption.py --seeds 5       # + planted-hierarchy precision/recall
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sae_lens import SAE
from sae_lens_ext_absorption import (
    AbsorptionAccumulator,
    AbsorptionConfig,
    absorption_report,
    planted_hierarchy,
)
from sae_lens_ext_absorption.boundaries import (
    LETTERS,
    WordStartLetters,
    previous_tokens,
)
from sae_lens_ext_absorption.first_letter import _split_by_token
from threadpoolctl import threadpool_limits
from timing import alternate, paired_ratio, write_json
from tqdm import tqdm

from sae_lens_ext.demo import demo_eval_tokens, demo_sae_path, load_demo_model
from sae_lens_ext.extras import require
from sae_lens_ext.shared_pass import model_activations
from sae_lens_ext.tokens import iter_token_batches

LogisticRegression = require(
    "sklearn.linear_model", "bench", "The dense peer's probes"
).LogisticRegression


def demo_batches(sae_id: str, n_tokens: int):
    """The demo model's activations, encoded, as host-style batches."""
    model = load_demo_model()
    sae = SAE.load_from_disk(demo_sae_path(sae_id))
    tokens = demo_eval_tokens()
    batches, offset = [], 0
    for acts in model_activations(
        model,
        sae.cfg.metadata.hook_name,
        iter_token_batches(tokens, 32, n_tokens),
        skip_bos=True,
    ):
        with torch.no_grad():
            codes = sae.encode(acts.sae_in)
        batches.append(
            dict(
                sae_in=acts.sae_in,
                feature_acts=codes,
                tokens=acts.tokens,
                previous=previous_tokens(acts),
                token_context=acts.token_context,
                positions=acts.positions,
                offset=offset,
            )
        )
        offset += len(acts.sae_in)
    return model, sae, batches


class Batch:
    """Attribute access to a batch dict."""

    def __init__(self, fields):
        self.__dict__.update(fields)


def ours(sae, batches, tokenizer, config):
    """The plugin's streaming path."""
    accumulator = AbsorptionAccumulator(sae, config, tokenizer)
    for batch in batches:
        accumulator.update(Batch(batch))
    return accumulator.result(seed=0)


# ----------------------------------------------------------------- dense peer
def saebench_row(projection, main_ids, acts, cosines, dec_norm, config):
    """One input, scored the way SAEBench's FeatureAbsorptionCalculator does."""
    contribution = acts * dec_norm * cosines
    main = float(contribution[main_ids].sum())
    mask = np.ones(len(acts), bool)
    mask[main_ids] = False
    mask &= (cosines >= config.absorber_cos_threshold) & (contribution > 0)
    top = np.sort(contribution[mask])[::-1][:3].sum()
    if main >= projection or top < config.share_threshold * projection:
        fraction = 0.0
    elif main <= 0:
        fraction = 1.0
    else:
        absorbed = min(top, projection - main)
        fraction = float(np.clip(absorbed / (absorbed + main), 0, 1))
    best = int(np.argmax(contribution))
    full = (
        all(acts[main_ids] < 1e-10)
        and cosines[best] >= 0.025
        and projection >= 0
        and contribution[best] >= config.share_threshold * projection
        and contribution[best] > 0
    )
    return fraction, full


def dense_discrepancy(sae, x, acts, config):
    """Exact top-N sets and per-latent absorption scores from all rows."""
    w_dec = sae.W_dec.detach().float()
    dec_norm = w_dec.norm(dim=1)
    unit = w_dec / dec_norm[:, None]
    projections = (x - sae.b_dec.detach()) @ unit.T
    encoder = acts.T.topk(config.top_n, dim=1)
    decoder = projections.T.topk(config.top_n, dim=1)
    cos_all = (unit @ unit.T).numpy()
    acts_np, dec_norm_np = acts.numpy(), dec_norm.numpy()
    overlap, score = [], []
    for latent in tqdm(range(acts.shape[1]), desc="dense discrepancy", leave=False):
        enc = set(encoder.indices[latent][encoder.values[latent] > 0].tolist())
        rows = decoder.indices[latent].tolist()
        overlap.append(len(enc & set(rows)) / len(rows))
        fractions = [
            saebench_row(
                float(decoder.values[latent, j]),
                [latent],
                acts_np[row],
                cos_all[latent],
                dec_norm_np,
                config,
            )[0]
            for j, row in enumerate(rows)
        ]
        score.append(float(np.mean(fractions)))
    return pd.DataFrame({"overlap": overlap, "absorption_score": score})


def dense_first_letter(sae, batches, tokenizer, config):
    """Keep every labelled row, probe with scikit-learn, score row by row."""
    letters_of = WordStartLetters(tokenizer)
    x_rows, code_rows, token_rows, label_rows, counts = [], [], [], [], {}
    for batch in batches:
        labels = letters_of(batch["tokens"], batch["previous"])
        for i in (labels >= 0).nonzero()[:, 0].tolist():
            token = int(batch["tokens"][i])
            if counts.get(token, 0) >= config.rows_per_token:
                continue
            if len(token_rows) >= config.letter_rows:
                break
            counts[token] = counts.get(token, 0) + 1
            x_rows.append(batch["sae_in"][i])
            code_rows.append(batch["feature_acts"][i])
            token_rows.append(token)
            label_rows.append(int(labels[i]))
    tokens = torch.tensor(token_rows)
    x = (torch.stack(x_rows) - sae.b_dec.detach()).numpy()
    codes = torch.stack(code_rows).numpy()
    y = np.array(label_rows)
    train, test = (t.numpy() for t in _split_by_token(tokens, config.test_fraction, 0))
    w_dec = sae.W_dec.detach().float().numpy()
    dec_norm = np.linalg.norm(w_dec, axis=1)
    scale = codes.max()
    records = []
    for letter in range(26):
        positive_train, positive_test = y[train] == letter, y[test] == letter
        if positive_train.sum() < 8 or positive_test.sum() < 4:
            continue
        probe = LogisticRegression(class_weight="balanced", max_iter=1000)
        probe.fit(x[train], positive_train)
        predicted = probe.predict(x[test])
        f1 = f1_score(predicted, positive_test)
        l1 = LogisticRegression(
            solver="liblinear",
            C=1.0 / (config.l1_penalty * len(train)),
            class_weight="balanced",
            l1_ratio=1.0,
        ).fit(codes[train] / scale, positive_train)
        difference = codes[train][positive_train].mean(0) - codes[train][
            ~positive_train
        ].mean(0)
        ranked = np.lexsort((-difference / scale, -l1.coef_[0]))[: config.max_k]
        best_k, best_f1 = 1, None
        for k in range(1, len(ranked) + 1):
            columns = ranked[:k]
            sparse = LogisticRegression(class_weight="balanced", max_iter=1000)
            sparse.fit(codes[train][:, columns], positive_train)
            score = f1_score(sparse.predict(codes[test][:, columns]), positive_test)
            if best_f1 is None:
                best_f1 = score
            elif score > best_f1 + config.f1_jump:
                best_k, best_f1 = k, score
            else:
                break
        main = ranked[:best_k].tolist()
        direction = probe.coef_[0] / np.linalg.norm(probe.coef_[0])
        cosines = w_dec @ direction / dec_norm
        fractions, fulls = [], []
        for row in test[positive_test & predicted]:
            fraction, full = saebench_row(
                float(x[row] @ direction), main, codes[row], cosines, dec_norm, config
            )
            fractions.append(fraction)
            fulls.append(full)
        records.append(
            {
                "letter": LETTERS[letter],
                "probe_f1": f1,
                "main_latents": ", ".join(map(str, main)),
                "absorption_rate": np.mean(fulls) if fulls else np.nan,
                "absorption_fraction": np.mean(fractions) if fractions else np.nan,
            }
        )
    return pd.DataFrame(records)


def f1_score(predicted, truth) -> float:
    """F1 of boolean arrays."""
    tp = float((predicted & truth).sum())
    return 2 * tp / (2 * tp + (predicted & ~truth).sum() + (~predicted & truth).sum())


def dense_peer(sae, batches, tokenizer, config):
    """Store every activation, then compute both diagnostics exactly."""
    x = torch.cat([b["sae_in"] for b in batches]).float()
    acts = torch.cat([b["feature_acts"] for b in batches]).float()
    latents = dense_discrepancy(sae, x, acts, config)
    letters = dense_first_letter(sae, batches, tokenizer, config)
    return latents, letters


# ------------------------------------------------------------------ synthetic
def synthetic_precision(seeds: int) -> pd.DataFrame:
    """Precision@k and recall of the discrepancy ranking on planted hierarchies."""
    rows = []
    for seed in range(seeds):
        for hierarchical in (True, False):
            planted = planted_hierarchy(seed=seed, hierarchical=hierarchical)
            x, _ = planted.sample(20_000, seed=100 + seed)
            with contextlib.redirect_stderr(io.StringIO()):  # no progress bars
                report = absorption_report(planted.sae, x, top_n=32)
            table = report.discrepancy.latents
            k = len(planted.parents)
            top = table.sort_values("absorption_score", ascending=False).head(k)
            flagged = set(table.loc[table["absorption_score"] >= 0.25, "latent"])
            parents = set(planted.parents)
            rows.append(
                {
                    "seed": seed,
                    "hierarchy": hierarchical,
                    "parents_absorbed": float(planted.absorption_of_parents().mean()),
                    "precision_at_k": len(set(top["latent"]) & parents) / k
                    if hierarchical
                    else float("nan"),
                    "recall": len(flagged & parents) / k
                    if hierarchical
                    else float("nan"),
                    "flagged": len(flagged),
                    "false_alarms": len(flagged - parents),
                    "max_score_non_parent": float(
                        table.loc[
                            ~table["latent"].isin(parents), "absorption_score"
                        ].max()
                    ),
                }
            )
    return pd.DataFrame(rows)


def scale_check(batches, d_sae: int, top_n: int) -> None:
    """Stream the demo activations through a random, sparse ReLU SAE of width
    ``d_sae`` and report time and the row store's size (memory bound)."""
    from sae_lens import StandardSAE, StandardSAEConfig

    d_in = batches[0]["sae_in"].shape[1]
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae))
    with torch.no_grad():
        sae.W_enc.normal_(0, d_in**-0.5)
        sae.W_dec.copy_(sae.W_enc.T)
        sae.b_enc.fill_(
            -0.2
        )  # about 1% of latents fire per token (pre-acts ~ N(0, 1/d_in))
    config = AbsorptionConfig(top_n=top_n, letters=False)
    accumulator = AbsorptionAccumulator(sae, config)
    start, peak = time.perf_counter(), 0
    for batch in tqdm(batches, desc=f"d_sae={d_sae}", leave=False):
        sae_in = batch["sae_in"] / batch["sae_in"].norm(dim=1, keepdim=True)
        with torch.no_grad():
            codes = sae.encode(sae_in)
        accumulator.update(
            Batch(dict(sae_in=sae_in, feature_acts=codes, offset=batch["offset"]))
        )
        peak = max(peak, accumulator.discrepancy.store.size)
    streamed = time.perf_counter() - start
    report = accumulator.result()
    total = time.perf_counter() - start
    n_rows = sum(len(b["sae_in"]) for b in batches)
    print(
        f"\nscale: d_sae={d_sae}, {n_rows} tokens, top_n={top_n}: stream {streamed:.1f} s, "
        f"total {total:.1f} s; row store peak {peak} rows (bound 2 x d_sae x N = "
        f"{2 * d_sae * top_n}), {report.metrics['alive_latents']} alive latents"
    )


def saebench_scoring_check(wheel_dir: str, model, sae, report) -> None:
    """Score the same inputs with SAEBench's own ``FeatureAbsorptionCalculator``
    (imported from an unpacked ``sae_bench`` wheel) and with ours.

    SAEBench builds its prompts, runs the model and scores each word; we
    score the activations of the very same prompts with
    :func:`absorption_scores`.  The probe is a random unit vector (this checks
    the scoring, not the probe) and the main latents are ours for the letter.
    """
    import sys

    from sae_lens_ext_absorption.letters import first_letter
    from sae_lens_ext_absorption.scoring import absorption_scores

    sys.path.insert(0, wheel_dir)
    from sae_bench.evals.absorption.feature_absorption_calculator import (
        FeatureAbsorptionCalculator,
    )

    calculator = FeatureAbsorptionCalculator(
        model=model,
        icl_word_list=[],
        max_icl_examples=0,
        base_template="{word}:",
        word_token_pos=-2,
        shuffle_examples=False,
        batch_size=20,
    )
    vocabulary = [model.tokenizer.decode([i]) for i in range(len(model.tokenizer))]
    unit = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
    generator = torch.Generator().manual_seed(0)
    n_words, worst, same_full = 0, 0.0, 0
    for row in report.first_letter.letters.head(6).itertuples():
        words = [
            w
            for w in vocabulary
            if w.startswith(" ") and first_letter(w) == LETTERS.index(row.letter)
        ][:40]
        main = [int(m) for m in row.main_latents.split(", ")]
        probe = torch.randn(sae.cfg.d_in, generator=generator)
        probe /= probe.norm()
        with torch.no_grad():
            theirs = calculator.calculate_absorption(
                sae, words, probe, main, layer=0, show_progress=False
            ).word_results
            tokens = model.to_tokens([result.prompt for result in theirs])
            _, cache = model.run_with_cache(tokens, names_filter=HOOK)
            x = cache[HOOK][:, -2]
            acts = sae.encode(x)
        cosines = (unit @ probe).expand_as(acts)
        contribution = acts * sae.W_dec.norm(dim=1) * cosines
        is_main = torch.zeros(acts.shape[1], dtype=torch.bool)
        is_main[main] = True
        mine = absorption_scores(
            x @ probe,
            contribution[:, is_main].sum(1),
            (acts[:, is_main] > 0).any(1),
            torch.where(is_main, 0.0, contribution),
            torch.where(is_main, 0.0, cosines),
            share_threshold=0.4,
            cos_threshold=0.1,
        )
        fractions = torch.tensor([result.absorption_fraction for result in theirs])
        fulls = torch.tensor([result.is_full_absorption for result in theirs])
        worst = max(worst, float((fractions - mine.fraction).abs().max()))
        same_full += int((fulls == mine.full).sum())
        n_words += len(words)
    print(
        f"\nSAEBench's FeatureAbsorptionCalculator vs ours on {n_words} prompts: "
        f"absorption fraction max |diff| {worst:.2e}, full absorption identical "
        f"{same_full}/{n_words}"
    )


HOOK = "blocks.0.hook_resid_post"


def main():
    """Run the comparison and print both times, the ratio and the agreement."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sae-id", default="resid0-topk-1024")
    parser.add_argument("--n-tokens", type=int, default=65_536)
    parser.add_argument("--top-n", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=0, help="planted-hierarchy seeds")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed runs per side, taking turns; the median is reported",
    )
    parser.add_argument("--json", type=Path, help="also write the timings here")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch and BLAS threads for both sides (1 is stable on a shared machine)",
    )
    parser.add_argument(
        "--saebench-wheel",
        default=None,
        help="folder of an unpacked sae_bench wheel: check our scoring against it",
    )
    parser.add_argument(
        "--scale-d-sae", type=int, default=0, help="also stream a random SAE this wide"
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 10)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)

    model, sae, batches = demo_batches(args.sae_id, args.n_tokens)
    n_rows = sum(len(b["sae_in"]) for b in batches)
    print(
        f"{args.sae_id}: {n_rows} tokens, d_sae={sae.cfg.d_sae}, top_n={args.top_n}, "
        f"{args.threads} thread(s)"
    )
    reports = {}

    def run_ours(dtype: str):
        def run_once() -> float:
            config = AbsorptionConfig(top_n=args.top_n, dtype=dtype)
            start = time.perf_counter()
            reports[dtype] = ours(sae, batches, model.tokenizer, config)
            return time.perf_counter() - start

        return run_once

    def run_dense() -> float:
        config = AbsorptionConfig(top_n=args.top_n)
        start = time.perf_counter()
        reports["dense"] = dense_peer(sae, batches, model.tokenizer, config)
        return time.perf_counter() - start

    sides = {f"ours ({d} projections)": run_ours(d) for d in ("float32", "bfloat16")}
    sides["dense peer"] = run_dense
    times = alternate(sides, args.repeats)  # the sides take turns, so drift hits both
    print(f"median of {args.repeats} alternating run(s) per side (min-max):")
    for name, spread in times.items():
        speedup = paired_ratio(times["dense peer"], spread)
        print(
            f"{name:28s} {spread.text():28s} dense/this = {speedup.text(unit='x', digits=1)}"
        )
    write_json(
        args.json,
        {
            "seconds": times,
            "speedup": {
                name: paired_ratio(times["dense peer"], spread)
                for name, spread in times.items()
            },
        },
    )
    dense_latents, dense_letters = reports["dense"]

    report = reports["float32"]
    mine = report.discrepancy.latents
    alive = ~mine["dead"].to_numpy()
    print("\nencoder-vs-decoder agreement with the dense peer (alive latents):")
    same = np.isclose(mine["overlap"], dense_latents["overlap"])[alive]
    print(f"  overlap identical: {same.mean():.4f}")
    difference = np.abs(mine["absorption_score"] - dense_latents["absorption_score"])
    print(f"  absorption score max |diff|: {difference[alive].max():.4f}")
    top_mine = set(mine[alive].nlargest(50, "absorption_score")["latent"])
    top_dense = set(dense_latents[alive].nlargest(50, "absorption_score").index)
    print(f"  top-50 suspects in common: {len(top_mine & top_dense)}/50")
    bf16 = reports["bfloat16"].discrepancy.latents
    print(
        "  bf16 vs fp32 projections: overlap identical "
        f"{np.isclose(bf16['overlap'], mine['overlap'])[alive].mean():.4f}, "
        "absorption score max |diff| "
        f"{np.abs(bf16['absorption_score'] - mine['absorption_score'])[alive].max():.4f}"
    )

    ours_letters = report.first_letter.letters.set_index("letter")
    dense_letters = dense_letters.set_index("letter")
    both = ours_letters.join(dense_letters, rsuffix="_dense", how="inner")
    print("\nfirst-letter agreement with the dense peer:")
    print(
        both[
            [
                "probe_f1",
                "probe_f1_dense",
                "main_latents",
                "main_latents_dense",
                "absorption_rate",
                "absorption_rate_dense",
            ]
        ].round(3)
    )
    print(
        f"  main latents identical for {(both['main_latents'] == both['main_latents_dense']).mean():.0%} "
        f"of letters; mean absorption rate {both['absorption_rate'].mean():.3f} (ours) vs "
        f"{both['absorption_rate_dense'].mean():.3f} (dense); mean |diff| per letter "
        f"{(both['absorption_rate'] - both['absorption_rate_dense']).abs().mean():.3f}"
    )

    if args.saebench_wheel:
        saebench_scoring_check(args.saebench_wheel, model, sae, report)

    if args.scale_d_sae:
        scale_check(batches, args.scale_d_sae, args.top_n)

    if args.seeds:
        table = synthetic_precision(args.seeds)
        print("\nplanted hierarchies (4 parents x 3 children, 8 free features):")
        print(table.round(3).to_string(index=False))
        hierarchy = table[table["hierarchy"]]
        control = table[~table["hierarchy"]]
        print(
            f"  {len(hierarchy)} seeds: precision@k {hierarchy['precision_at_k'].mean():.3f}, "
            f"recall {hierarchy['recall'].mean():.3f}, false alarms "
            f"{int(hierarchy['false_alarms'].sum())}; without hierarchy: flagged "
            f"{int(control['flagged'].sum())}, max score {control['max_score_non_parent'].max():.3f}"
        )


if __name__ == "__main__":
    main()
