"""Arms at equal steps and width: plain TopK, token table, upstream-SAE table, both,
and the upstream table with the discrete top-1 key.

Downstream SAEs train on a later hook of a release's model; the upstream-SAE
table is keyed on a frozen SAE of the same release at an earlier hook
(Pearce's extension of tokenized SAEs), by its codes ``g @ U`` or by its
top-1 latent ``U[argmax g]`` (arm ``upstream-top1``).  All arms share the width, k, steps,
batch size, learning rates, data order and seed; the token tables start from
the paper's unigram initialisation, the upstream table from least squares.
Reported per arm: held-out MSE, explained variance, spliced next-token CE
(keys taken from the same forward pass), steps to reach target MSEs, learning
curves (``learning_curves.png``), and for the upstream arms the "effective
tokens" (``effective_tokens_<arm>.csv``, with unit counts against all
latents as the null baseline).

It reads the release's ``release.json``: with a ``hooks`` list (release v2),
the default hook is the last one and the default upstream SAE the first one
at an earlier hook of the same architecture and width; without it (v1, one
hook at ``blocks.0``) the default is ``blocks.1.hook_resid_post`` and the
upstream SAE the release's default SAE.

    python bench/bench_tokenized_upstream.py --out /tmp/tokup     # 5 arms, 600 steps
    python bench/bench_tokenized_upstream.py --arms plain,token,token-mean,token-same-lr \
        --hook blocks.0.hook_resid_post   # the initialisation / table-lr defaults
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

# Arms: TrainingOptions overrides (``tokenized=False`` is SAE-Lens's plain SAE).
ARMS = {
    "plain": {"tokenized": False},
    "token": {"lookup": "token"},
    "upstream": {"lookup": "upstream_sae"},
    "both": {"lookup": "both"},
    "upstream-top1": {"lookup": "upstream_sae", "upstream_key": "top1"},
    "both-top1": {"lookup": "both", "upstream_key": "top1"},
    "token-mean": {"lookup": "token", "init": "mean"},
    "token-same-lr": {"lookup": "token", "lookup_lr": None},
    "both-same-lr": {"lookup": "both", "lookup_lr": None},
    "upstream-zeros": {"lookup": "upstream_sae", "upstream_init": "zeros"},
}
# Target MSEs, as multiples of the plain arm's final held-out MSE.
TARGET_FACTORS = (2.0, 1.5, 1.25, 1.1, 1.0, 0.9)


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--release", default="sae-lens-ext/demo")
    parser.add_argument("--hook", default=None, help="downstream hook (see above)")
    parser.add_argument("--upstream-id", default=None, help="upstream SAE id")
    parser.add_argument("--arms", default="plain,token,upstream,both,upstream-top1")
    parser.add_argument("--d-sae", type=int, default=1024)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lookup-lr", type=float, default=0.01)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--eval-fraction", type=float, default=0.1)
    parser.add_argument("--ce-sequences", type=int, default=64)
    parser.add_argument("--top", type=int, default=20, help="effective tokens shown")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--arm",
        default=None,
        help="train this one arm only (into --out/<arm>: SAE, curve.csv, "
        "metrics.json), e.g. to run arms as parallel processes; then --collect",
    )
    parser.add_argument(
        "--collect",
        action="store_true",
        help="the comparison of the arms in --arms trained with --arm into --out",
    )
    parser.add_argument(
        "--effective-only",
        action="store_true",
        help="only the effective-tokens report, from the SAEs saved in --out",
    )
    return parser.parse_args()


def default_hooks(release, info: dict, hook, upstream_id) -> tuple[str, str]:
    """The downstream hook and the upstream SAE id (see the module docstring)."""
    if "hooks" not in info:  # v1: one hook, blocks.0
        return (
            hook or "blocks.1.hook_resid_post",
            upstream_id or release.default_sae_id,
        )
    hook = hook or info["hooks"][-1]["hook_name"]
    if upstream_id is None:
        layer = int(hook.split(".")[1])
        upstream_id = next(
            sae_id
            for sae_id, meta in info["saes"].items()
            if int(meta.get("hook_name", info.get("hook_name")).split(".")[1]) < layer
            and meta.get("architecture") == "topk"
            and meta.get("d_sae") == 1024
        )
    return hook, upstream_id


def main() -> None:
    """Train every arm, write the comparison, curves, plot and effective tokens."""
    import dataclasses

    from sae_lens_ext_tokenized import TrainingOptions, compare_with_baseline
    from sae_lens_ext_tokenized.comparison import steps_to_target
    from sae_lens_ext_tokenized.report import save_comparison

    from sae_lens_ext.plugins import get_registry

    args = parse_args()
    release = get_registry().releases()[args.release]
    info = release_info(release)
    hook, upstream_id = default_hooks(release, info, args.hook, args.upstream_id)
    model = release.load_model("cpu")
    tokens = release.load_tokens(None)
    upstream = f"{args.release}/{upstream_id}"
    options = TrainingOptions(
        d_sae=args.d_sae, k=args.k, steps=args.steps, batch_size=args.batch_size,
        lr=args.lr, lookup_lr=args.lookup_lr, eval_every=args.eval_every,
        eval_fraction=args.eval_fraction, init_tokens=len(tokens) * tokens.shape[1],
        seed=args.seed, autocast=not args.fp32, upstream=upstream,
    )  # fmt: skip
    names = args.arms.split(",")
    if args.effective_only:
        from sae_lens import SAE

        for name in names:
            if name != "plain" and ARMS[name].get("lookup", "token") != "token":
                sae = SAE.load_from_disk(args.out / name)
                report_effective_tokens(name, sae, model, tokens, args)
        return
    variants = {name: ARMS[name] for name in names if name != "plain"}
    started = time.perf_counter()
    if args.arm:
        train_one_arm(args.arm, model, hook, tokens, options, args)
        return
    if args.collect:
        result = collect_arms(names, args.out)
    else:
        result = compare_with_baseline(
            model, hook, tokens, options, variants=variants,
            ce_sequences=args.ce_sequences, out_dir=args.out,
        )  # fmt: skip
        save_comparison(result, args.out)
    n_eval = len(result.arms["baseline"].eval_tokens)
    header = (
        f"release {args.release} (release.json version: "
        f"{'v2 (hooks listed)' if 'hooks' in info else 'v1'}), hook {hook}, upstream "
        f"SAE {upstream} at {options_upstream_hook(upstream)}; "
        f"{len(tokens) - n_eval} training / {n_eval} held-out sequences of "
        f"{tokens.shape[1]}; d_sae={args.d_sae}, k={args.k}, steps={args.steps}, "
        f"batch={args.batch_size}, lr={args.lr}, table lr={args.lookup_lr}, "
        f"{'fp32' if args.fp32 else 'bf16 autocast'}; "
        + (
            "arms trained by --arm (train_seconds per arm)"
            if args.collect
            else f"total {time.perf_counter() - started:.0f} s"
        )
    )
    print(header)
    columns = ["arm", "mse", "explained_variance", "l0", "ce_loss_clean",
               "ce_loss_spliced", "ce_loss_recovered", "steps_to_baseline_mse"]  # fmt: skip
    print(result.table[columns].to_string(index=False, float_format="%.4f"))
    # compared unrounded (the plain arm reaches its own final MSE at its last
    # step), labelled rounded
    targets = {round(f * result.target_mse, 4): f * result.target_mse
               for f in TARGET_FACTORS}  # fmt: skip
    reached = pd.DataFrame(
        {
            name: {label: steps_to_target(arm.curve, t) for label, t in targets.items()}
            for name, arm in result.arms.items()
        }
    ).T.astype("Int64")
    reached.to_csv(args.out / "steps_to_target.csv")
    print(
        "\nsteps to reach a held-out MSE (first evaluation at or below; targets are "
        f"{TARGET_FACTORS} x the plain arm's final MSE):"
    )
    print(reached.to_string())
    curves = pd.DataFrame(
        {name: arm.curve.set_index("step").mse for name, arm in result.arms.items()}
    )
    print("\nlearning curves (held-out MSE per element):")
    print(curves.iloc[:: max(1, len(curves) // 12)].to_string(float_format="%.4f"))
    (args.out / "header.txt").write_text(header + "\n")
    for name in variants:
        if not args.collect and uses_upstream(
            dataclasses.replace(options, **ARMS[name])
        ):
            report_effective_tokens(name, result.arms[name].sae, model, tokens, args)


def uses_upstream(options) -> bool:
    """Whether an arm's options train an upstream-SAE table."""
    return options.tokenized and options.lookup != "token"


def train_one_arm(name, model, hook, tokens, options, args) -> None:
    """Train arm ``name`` into ``args.out/<arm>`` with its curve and metrics
    (``plain`` is saved as ``baseline``, as in the full comparison)."""
    import dataclasses

    from sae_lens_ext_tokenized import ce_metrics, train_tokenized_sae

    folder = args.out / ("baseline" if name == "plain" else name)
    arm_options = dataclasses.replace(options, **ARMS[name])
    started = time.perf_counter()
    arm = train_tokenized_sae(model, hook, tokens, arm_options, out_dir=folder)
    seconds = time.perf_counter() - started
    ce = ce_metrics(model, hook, arm.sae, arm.eval_tokens[: args.ce_sequences])
    arm.curve.to_csv(folder / "curve.csv", index=False)
    metrics = {**arm.metrics, **ce, "train_seconds": seconds,
               "n_eval": len(arm.eval_tokens)}  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(name, metrics)
    if uses_upstream(arm_options):
        report_effective_tokens(name, arm.sae, model, tokens, args)


def collect_arms(names, out: Path):
    """The :class:`Comparison` of arms trained one by one with ``--arm``."""
    from types import SimpleNamespace

    from sae_lens_ext_tokenized.comparison import (
        Comparison,
        learning_curve_plot,
        steps_to_target,
    )
    from sae_lens_ext_tokenized.report import save_comparison

    arms, rows = {}, []
    for name in names:
        arm_name = "baseline" if name == "plain" else name
        folder = out / arm_name
        metrics = json.loads((folder / "metrics.json").read_text())
        curve = pd.read_csv(folder / "curve.csv")
        eval_tokens = [None] * metrics.pop("n_eval")
        arms[arm_name] = SimpleNamespace(curve=curve, eval_tokens=eval_tokens)
        rows.append({"arm": arm_name, **metrics})
    target = arms["baseline"].curve.mse.iloc[-1]
    reached = {n: steps_to_target(a.curve, target) for n, a in arms.items()}
    table = pd.DataFrame(rows).assign(
        steps_to_baseline_mse=lambda t: [reached[n] for n in t.arm]
    )
    figure = learning_curve_plot({n: a.curve for n, a in arms.items()}, target)
    result = Comparison(arms, table, target, reached, None, figure)
    save_comparison(result, out)
    return result


def report_effective_tokens(name, sae, model, tokens, args) -> None:
    """Write and print the effective tokens of one upstream-table arm."""
    from sae_lens_ext_tokenized.effective_tokens import (
        decode_contexts,
        effective_tokens,
    )

    top, counts = effective_tokens(sae, model, tokens, top=args.top)
    top = decode_contexts(top, model.tokenizer)
    top.to_csv(args.out / f"effective_tokens_{name}.csv", index=False)
    counts.to_csv(args.out / f"effective_token_units_{name}.csv")
    print(f"\neffective tokens of arm {name!r} (top {args.top} latents by weight):")
    shown = ["latent", "firings", "weight", "cos_upstream_decoder", "unit",
             "determined_1", "determined_2", "determined_3", "distinct_tokens",
             "contexts"]  # fmt: skip
    print(top[shown].to_string(index=False, float_format="%.3f", max_colwidth=70))
    print(counts.to_string())


def release_info(release) -> dict:
    """The release's ``release.json`` beside its ``saes/`` folder ({} if none)."""
    folder = Path(release.saes[release.default_sae_id]).parent.parent
    path = folder / "release.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def options_upstream_hook(upstream: str) -> str:
    """The hook of the upstream SAE ``<release>/<id>``."""
    from sae_lens_ext import load_sae

    release, _, sae_id = upstream.rpartition("/")
    return load_sae(release, sae_id).cfg.metadata.hook_name


if __name__ == "__main__":
    main()
