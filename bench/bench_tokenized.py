"""Tokenized TopK SAE vs SAE-Lens's plain TopK SAE on the demo model.

Both arms train on the same ``blocks.0.hook_resid_post`` activations of the
demo model, in the same order, with the same width, k, steps, batch size,
learning rate and initial ``b_dec`` (the mean activation); the tokenized arm
adds the per-token lookup table, initialised from per-token mean activations
(Dooms & Wilhelm 2024).  Held-out sequences (the last ``--eval-fraction`` of
the demo's token file) give the learning curves, the final MSE, explained
variance, and the demo model's next-token CE loss with each SAE's
reconstruction spliced in.  Prints both training times and their ratio, the
curves, and the steps each arm needs to reach the baseline's final MSE.

    python bench/bench_tokenized.py                      # d_sae 1024, k 16, 600 steps
    python bench/bench_tokenized.py --steps 200 --fp32   # quicker, full precision
    python bench/bench_tokenized.py --pair-buckets 8192  # plus a token-pair arm
    python bench/bench_tokenized.py --inits mean,unigram # compare table inits

Training times of whole arms run one after the other, so on a shared machine
they are not comparable; the per-step cost is measured separately with the two
SAEs' steps interleaved on the same batches (median of ``--timing-steps``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch
from timing import Spread, alternate, paired_ratio

HOOK = "blocks.0.hook_resid_post"


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d-sae", type=int, default=1024)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--eval-fraction", type=float, default=0.1)
    parser.add_argument("--pair-buckets", type=int, default=0, help="add a pair arm")
    parser.add_argument(
        "--inits", default="mean", help="table inits, one tokenized arm each"
    )
    parser.add_argument("--timing-steps", type=int, default=30)
    parser.add_argument("--ce-sequences", type=int, default=64)
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="save SAEs, csv, plot")
    return parser.parse_args()


def main() -> None:
    """Train both arms, print the comparison."""
    from sae_lens_ext_tokenized import TrainingOptions, compare_with_baseline
    from sae_lens_ext_tokenized.report import save_comparison, summary_text

    from sae_lens_ext.demo import demo_eval_tokens, load_demo_model

    args = parse_args()
    torch.manual_seed(args.seed)
    model = load_demo_model()
    tokens = demo_eval_tokens()
    options = TrainingOptions(
        d_sae=args.d_sae,
        k=args.k,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        eval_every=args.eval_every,
        eval_fraction=args.eval_fraction,
        init_tokens=len(tokens) * tokens.shape[1],
        seed=args.seed,
        autocast=not args.fp32,
    )
    inits = args.inits.split(",")
    variants = {"tokenized": {"init": inits[0]}}
    variants.update({f"tokenized-{init}": {"init": init} for init in inits[1:]})
    if args.pair_buckets:
        variants["tokenized+pairs"] = {"pair_buckets": args.pair_buckets}
    started = time.perf_counter()
    result = compare_with_baseline(
        model,
        HOOK,
        tokens,
        options,
        variants=variants,
        ce_sequences=args.ce_sequences,
        out_dir=args.out,
    )
    precision = "fp32" if args.fp32 else "bf16 autocast"
    n_eval = len(result.arms["baseline"].eval_tokens)
    print(
        f"\ndemo model {HOOK}; {len(tokens) - n_eval} training / {n_eval} held-out "
        f"sequences of {tokens.shape[1]}; d_sae={args.d_sae}, k={args.k}, "
        f"steps={args.steps}, batch={args.batch_size}, lr={args.lr}, {precision}; "
        f"total {time.perf_counter() - started:.0f} s\n"
    )
    print(summary_text(result))
    plain, tokenized = interleaved_step_times(model, tokens, options, args)
    print(
        f"seconds per training step (interleaved, median of {args.timing_steps}, "
        f"min-max): baseline {plain.text(digits=4)}, tokenized "
        f"{tokenized.text(digits=4)} (tokenized / baseline, step by step "
        f"{paired_ratio(tokenized, plain).text(unit='', digits=2)})"
    )
    curves = pd.DataFrame(
        {name: arm.curve.set_index("step").mse for name, arm in result.arms.items()}
    )
    print("\nlearning curves (held-out MSE per element):")
    print(curves.to_string(float_format="%.4f"))
    if args.out is not None:
        save_comparison(result, args.out)
        print(
            f"\nsaved SAEs, comparison.csv, curves.csv, learning_curves.png in {args.out}"
        )


def interleaved_step_times(model, tokens, options, args) -> tuple[Spread, Spread]:
    """Seconds per ``SAETrainer`` step of both arms, steps alternating."""
    import dataclasses

    from sae_lens_ext_tokenized.data import packed_rows
    from sae_lens_ext_tokenized.training import make_trainer, new_training_sae

    rows = packed_rows(model, HOOK, tokens[:64])
    batches = rows[: len(rows) // args.batch_size * args.batch_size].split(
        args.batch_size
    )
    trainers = {}
    for tokenized in (False, True):
        arm = dataclasses.replace(options, tokenized=tokenized)
        sae = new_training_sae(arm, model.cfg.d_model, model.cfg.d_vocab)
        trainers[tokenized] = make_trainer(sae, arm, iter(()))
    d_in = model.cfg.d_model
    step_index = {False: 0, True: 0}

    def step(tokenized: bool):
        def run_once() -> float:
            batch = batches[step_index[tokenized] % len(batches)]
            step_index[tokenized] += 1
            started = time.perf_counter()
            trainers[tokenized].step(batch if tokenized else batch[:, :d_in])
            return time.perf_counter() - started

        return run_once

    times = alternate(
        {"baseline": step(False), "tokenized": step(True)},
        rounds=args.timing_steps,
        warmup=3,
    )
    return times["baseline"], times["tokenized"]


if __name__ == "__main__":
    main()
