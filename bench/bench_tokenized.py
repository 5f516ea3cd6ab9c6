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
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

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
    variants = {"tokenized": {}}
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
    times = result.table.set_index("arm").train_seconds
    print(
        f"training time: baseline {times['baseline']:.1f} s, tokenized "
        f"{times['tokenized']:.1f} s (tokenized / baseline "
        f"{times['tokenized'] / times['baseline']:.2f}; includes held-out evals)"
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


if __name__ == "__main__":
    main()
