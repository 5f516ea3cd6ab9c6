"""Benchmark: our meta-SAE trainer vs SAE-Lens's BatchTopK SAE + SAETrainer.

Both train a BatchTopK SAE on the same decoder matrix (a planted,
random-but-structured decoder: rows are sparse combinations of known
directions plus noise) for the same number of steps, batch size, learning
rate and schedule, in one process, and are evaluated the same way:

- ``FVU@k``: fraction of variance unexplained over the whole matrix when
  the ``k * rows`` largest pre-activations are kept (BatchTopK with the
  whole matrix as one batch), so both are compared at exactly L0 = k;
- the FVU and L0 of each SAE's own saved inference threshold;
- the mean max cosine between the planted directions and the decoder rows.

    python bench/bench_meta_sae.py                      # 16384 x 512, 1000 steps
    python bench/bench_meta_sae.py --steps 300 --threads 1
    python bench/bench_meta_sae.py --decoder demo --steps 2000   # the demo SAE
    python bench/bench_meta_sae.py --paper-only         # 49152 x 768, ours only
    python bench/bench_meta_sae.py --ours-precisions    # ours in bf16 and in fp32

The trainers take turns for ``--repeats`` rounds (ours, SAE-Lens, ours,
...), since the load of a shared machine drifts; times are medians with
their min-max range and the speed-up is the median of the round-by-round
ratios.  Training is deterministic for a seed, so every round's quality
numbers are the same.  ``--threads`` applies to both trainers.  ``--decoder demo`` uses the real
decoder of the embedded demo SAE ``resid0-topk-1024`` (its latents that
fired on held-out tokens, unit-normalised) instead of a planted one.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch
from sae_lens_ext_meta_sae import MetaSAEConfig, MetaSAEWeights, planted_decoder
from sae_lens_ext_meta_sae.synthetic import mean_max_cosine
from sae_lens_ext_meta_sae.trainer import (
    MetaSAETrainer,
    encode_sparse,
    global_threshold,
    reconstruct,
)
from timing import Spread, alternate, paired_ratio, write_json


def fvu(data: torch.Tensor, recon: torch.Tensor) -> float:
    """Fraction of variance unexplained (squared error over centred variance)."""
    return float((data - recon).pow(2).sum() / (data - data.mean(0)).pow(2).sum())


def evaluate(weights: MetaSAEWeights, data: torch.Tensor, k: float) -> dict:
    """FVU@k (global top k*rows), and FVU/L0 at the weights' own threshold."""
    own = {"own_threshold_fvu": fvu(data, reconstruct(weights, data))}
    own["own_threshold_l0"] = sum(s.nnz for s in encode_sparse(weights, data)) / len(
        data
    )
    at_k = MetaSAEWeights(
        weights.W_enc, weights.b_enc, weights.W_dec, weights.b_dec, 0.0
    )
    at_k.threshold = global_threshold(at_k, data, k)
    selections = encode_sparse(at_k, data)
    fired = torch.zeros(weights.d_meta, dtype=torch.bool)
    for selection in selections:
        fired |= selection.fired()
    return {
        "fvu_at_k": fvu(data, reconstruct(at_k, data)),
        "dead": int((~fired).sum()),
        **own,
    }


def train_ours(data: torch.Tensor, config: MetaSAEConfig):
    """Our trainer; returns (seconds, weights)."""
    trainer = MetaSAETrainer(data, config.meta_width(len(data)), config)
    started = time.perf_counter()
    weights = trainer.fit(progress=True)
    return time.perf_counter() - started, weights


def train_peer(data: torch.Tensor, config: MetaSAEConfig, autocast: bool):
    """SAE-Lens BatchTopKTrainingSAE + SAETrainer; returns (seconds, weights)."""
    from sae_lens import (
        SAE,
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
        SAETrainer,
    )
    from sae_lens.config import SAETrainerConfig

    torch.manual_seed(config.seed or 0)
    d_meta = config.meta_width(len(data))
    batch = min(config.batch_size, len(data))
    sae = BatchTopKTrainingSAE(
        BatchTopKTrainingSAEConfig(d_in=data.shape[1], d_sae=d_meta, k=config.k)
    )
    trainer_config = SAETrainerConfig(
        total_training_samples=config.steps * batch,
        train_batch_size_samples=batch,
        lr=config.lr,
        lr_end=config.lr,
        lr_decay_steps=int(config.lr_decay_fraction * config.steps),
        autocast=autocast,
        dead_feature_window=config.dead_after,
    )

    def batches():
        generator = torch.Generator().manual_seed(config.seed or 0)
        while True:
            order = torch.randperm(len(data), generator=generator)
            for start in range(0, len(data) - batch + 1, batch):
                yield data[order[start : start + batch]]

    trainer = SAETrainer(trainer_config, sae, batches())
    started = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as folder:
        sae.save_inference_model(folder)
        inference = SAE.load_from_disk(folder)
    weights = MetaSAEWeights(
        W_enc=inference.W_enc.detach(),
        b_enc=inference.b_enc.detach(),
        W_dec=inference.W_dec.detach(),
        b_dec=inference.b_dec.detach(),
        threshold=float(inference.threshold.detach()[0]),
    )
    return seconds, weights


def row(name: str, seconds: Spread, steps: int, quality: dict) -> str:
    """One Markdown table row: median time, its range, quality numbers."""
    return (
        f"| {name} | {seconds.median:.1f} | {seconds.low:.1f}-{seconds.high:.1f} | "
        f"{1e3 * seconds.median / steps:.1f} | "
        f"{quality['fvu_at_k']:.4f} | {quality['dead']} | "
        f"{quality['own_threshold_l0']:.2f} | {quality['own_threshold_fvu']:.4f} | "
        f"{quality['planted_cos']:.3f} |"
    )


def main() -> None:
    """Parse options, run both trainers, print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16384)
    parser.add_argument("--d-in", type=int, default=512)
    parser.add_argument("--d-meta", type=int, default=None)
    parser.add_argument("--k", type=float, default=4.0)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--precision",
        choices=["bf16", "fp32"],
        default="bf16",
        help="bf16: autocast for both (ours: bf16 encoder; SAE-Lens: autocast=True)",
    )
    parser.add_argument("--decoder", choices=["planted", "demo"], default="planted")
    parser.add_argument(
        "--repeats", type=int, default=3, help="alternating rounds (median reported)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--ours-precisions",
        action="store_true",
        help="instead of SAE-Lens, run ours again in the other precision",
    )
    parser.add_argument(
        "--paper", action="store_true", help="also time ours at 49152 x 768"
    )
    parser.add_argument(
        "--paper-only", action="store_true", help="only time ours at 49152 x 768"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    autocast = args.precision == "bf16"
    if args.paper_only:
        paper_scale(args, autocast)
        return
    data, directions = decoder_matrix(args)
    config = MetaSAEConfig(
        d_meta=args.d_meta,
        k=args.k,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        autocast=autocast,
        seed=args.seed,
        threads=torch.get_num_threads(),
    )
    rows, d_in = data.shape
    d_meta = config.meta_width(rows)
    print(
        f"{args.decoder} decoder {rows} x {d_in}, d_meta {d_meta}, k {args.k:g}, "
        f"{args.steps} steps of {min(args.batch_size, rows)} rows, lr "
        f"{args.lr:g}, {args.precision}, {torch.get_num_threads()} threads"
    )
    names = {"ours": "sae-lens-ext meta_sae"}
    if args.ours_precisions:
        other = dataclasses.replace(config, autocast=not autocast)
        names["other"] = f"sae-lens-ext meta_sae, {'fp32' if autocast else 'bf16'}"
        trainers = {"ours": lambda: train_ours(data, config)}
        trainers["other"] = lambda: train_ours(data, other)
    else:
        names["peer"] = "SAE-Lens BatchTopK + SAETrainer"
        trainers = {
            "ours": lambda: train_ours(data, config),
            "peer": lambda: train_peer(data, config, autocast),
        }
    trained = {}

    def timed(side: str):
        def run_once() -> float:
            seconds, trained[side] = trainers[side]()
            return seconds

        return run_once

    times = alternate({side: timed(side) for side in trainers}, args.repeats)
    print(
        "| trainer | wall s (median) | range | ms/step | FVU@k | dead | "
        "own-threshold L0 | own-threshold FVU | planted mean max cos |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    qualities = {}
    for side, weights in trained.items():
        qualities[side] = evaluate(weights, data, args.k)
        qualities[side]["planted_cos"] = (
            float("nan")
            if directions is None
            else mean_max_cosine(directions, weights.W_dec)
        )
        print(row(names[side], times[side], args.steps, qualities[side]))
    other = "other" if args.ours_precisions else "peer"
    ratio = paired_ratio(times[other], times["ours"])
    what = "fp32 / bf16" if autocast else "bf16 / fp32"
    if not args.ours_precisions:
        what = "SAE-Lens / ours"
    print(f"time ratio {what}, round by round: {ratio.text(unit='x')}")
    write_json(
        args.json,
        {
            "rows": rows,
            "d_in": d_in,
            "d_meta": d_meta,
            "steps": args.steps,
            "seconds": times,
            "speedup": ratio,
            "quality": qualities,
            "names": names,
        },
    )
    if args.paper:
        paper_scale(args, autocast)


def decoder_matrix(args) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The unit rows to train on and the planted directions (None for demo)."""
    if args.decoder == "planted":
        d_meta = MetaSAEConfig(d_meta=args.d_meta).meta_width(args.rows)
        planted = planted_decoder(args.rows, args.d_in, d_meta, seed=args.seed)
        return planted.decoder, planted.directions
    from sae_lens import SAE
    from sae_lens_ext_meta_sae import decoder_rows

    from sae_lens_ext.demo import demo_eval_tokens, demo_sae_path, load_demo_model

    sae = SAE.load_from_disk(demo_sae_path("resid0-topk-1024"))
    model = load_demo_model()
    tokens = demo_eval_tokens(64)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=sae.cfg.metadata.hook_name)
        acts = sae.encode(cache[sae.cfg.metadata.hook_name][:, 1:].reshape(-1, 128))
    alive = torch.nonzero((acts > 0).any(0)).squeeze(1)
    return decoder_rows(sae, alive), None


def paper_scale(args, autocast: bool) -> None:
    """Time ours on a 49152 x 768 planted decoder with the paper's d_meta and k."""
    config = MetaSAEConfig(
        k=4,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        autocast=autocast,
        seed=args.seed,
        threads=torch.get_num_threads(),
    )
    planted = planted_decoder(49152, 768, config.meta_width(49152), seed=args.seed)
    seconds, weights = train_ours(planted.decoder, config)
    quality = evaluate(weights, planted.decoder, 4)
    quality["planted_cos"] = mean_max_cosine(planted.directions, weights.W_dec)
    print("paper scale: 49152 x 768, d_meta 2304, k 4 (one run)")
    print(row("sae-lens-ext meta_sae", Spread((seconds,)), args.steps, quality))


if __name__ == "__main__":
    main()
