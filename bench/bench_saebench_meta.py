"""Agreement: our meta-SAE at ``--preset saebench`` vs SAEBench's meta_structure eval.

SAEBench's own ``run_eval_single_sae`` (imported from an unpacked
``sae_bench`` wheel, which cannot be installed beside numpy 2; get it with
``pip download sae-bench --no-deps`` and unzip it) and our meta-SAE at the
``saebench`` preset's settings are trained on the same decoder, for several
seeds each.  The script prints both decoder variance explained (mean and
std over seeds), their relative difference (target: within 1%), and checks
that our SAEBench-format JSON has the same fields as SAEBench's own output
object.

    python bench/bench_saebench_meta.py --saebench-wheel /tmp/sbw/unpacked
    python bench/bench_saebench_meta.py --saebench-wheel DIR --seeds 5 --sae-id resid0-topk-2048
    python bench/bench_saebench_meta.py --saebench-wheel DIR --seeds 4 --first-seed 8 \
        --record runs/meta-agreement.jsonl      # appends one line per side and seed
    python bench/bench_saebench_meta.py --summarise runs/meta-agreement.jsonl [MORE.jsonl ...]

Both sides train in float32 by default (``--autocast`` turns on SAEBench's
default bf16 autocast for both; SAE-Lens's trainer is slow under CPU
autocast) on ``--threads`` CPU threads.  Both are noisy from seed to seed:
the summary gives mean ± sample std per side, the relative difference of the
means and its standard error, so a difference within seed noise is told
apart from a real one.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from saebench_wheel import add_wheel

from sae_lens_ext import load_sae
from sae_lens_ext.demo import DEMO_RELEASE
from sae_lens_ext.presets import preset_overrides


def import_saebench(wheel_dir: str):
    """SAEBench's meta_structure ``main`` and ``eval_config`` modules."""
    add_wheel(wheel_dir)
    from sae_bench.evals.meta_structure import eval_config, main

    return main, eval_config


def saebench_run(main, eval_config, sae, sae_id: str, seed: int, changes: dict):
    """SAEBench's decoder variance explained, train time, and its output object."""
    config = eval_config.MetaStructureEvalConfig(random_seed=seed, **changes)
    torch.manual_seed(seed)
    output = main.run_eval_single_sae(DEMO_RELEASE, sae_id, sae, config, "cpu")
    metrics = output.eval_result_metrics.meta_structure
    return (
        metrics.decoder_fraction_variance_explained,
        metrics.train_time_seconds,
        output,
    )


def our_run(sae, seed: int, changes: dict) -> tuple[float, float]:
    """Our decoder variance explained and train time at the saebench preset."""
    from sae_lens_ext_meta_sae import MetaSAEConfig
    from sae_lens_ext_meta_sae.decompose import decompose
    from sae_lens_ext_meta_sae.meta_sae import fit_meta_sae

    config = MetaSAEConfig(seed=seed, null_seeds=0, **our_settings(changes))
    meta_sae, log = fit_meta_sae(sae, config, progress=False)
    metrics = decompose(sae, meta_sae, null_seeds=0).metrics
    return metrics["fraction_variance_explained"], log.seconds


def paired_run(main, eval_config, sae_id: str, seed: int, changes, our_changes):
    """SAEBench's run and ours from its start and on its batches: both FVEs,
    each side's model under the other's scorer, and the runs' agreement."""
    from sae_lens_ext_meta_sae import MetaSAEConfig, MetaSAETrainer
    from sae_lens_ext_meta_sae.decompose import decompose
    from sae_lens_ext_meta_sae.meta_sae import decoder_rows, to_sae_lens
    from saebench_meta_paired import (
        SAEBenchRecorder,
        decoder_agreement,
        our_scorer_on,
        start_trainer_from,
        their_scorer_on,
    )

    sae = load_sae(DEMO_RELEASE, sae_id)
    with SAEBenchRecorder(main) as recorder:
        theirs, their_seconds, output = saebench_run(
            main, eval_config, sae, sae_id, seed, changes
        )
    sae = load_sae(DEMO_RELEASE, sae_id)
    rows = decoder_rows(sae)
    config = MetaSAEConfig(seed=seed, null_seeds=0, **our_settings(our_changes))
    trainer = MetaSAETrainer(rows, config.meta_width(len(rows)), config)
    start_trainer_from(trainer, recorder.start, recorder.batches)
    weights = trainer.fit(progress=False)
    meta_sae = to_sae_lens(
        weights, base=sae, config=config, log=trainer.log, release=None, sae_id=None
    )
    ours = decompose(sae, meta_sae, null_seeds=0).metrics["fraction_variance_explained"]
    raw = sae.W_dec.detach().float()
    extra = {
        "saebench_model_our_scorer": our_scorer_on(recorder.trained, rows, config.k),
        "our_model_saebench_scorer": their_scorer_on(
            main, weights, rows.shape[1], config.k, raw, 4096
        ),
        "min_decoder_cosine": decoder_agreement(recorder.trained, weights),
        "batches": len(recorder.batches),
    }
    return (theirs, their_seconds), (ours, trainer.log.seconds), extra, output


def our_settings(changes: dict) -> dict:
    """The saebench preset's trainer settings with ``changes``."""
    settings = {
        k: v
        for k, v in preset_overrides("saebench")["meta_sae"].items()
        if k != "skip_dead"
    }
    return {**settings, **changes}


def reference_run(sae_id: str, seed: int, steps: int | None) -> tuple[float, float]:
    """The dense re-implementation of SAEBench's definition in
    ``tests/saebench_meta_reference.py`` (its own init and batches)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import saebench_meta_reference

    data = load_sae(DEMO_RELEASE, sae_id).W_dec.detach().float()
    started = time.perf_counter()
    fve = saebench_meta_reference.saebench_meta_fve(data, seed, steps=steps or 1500)
    return fve, time.perf_counter() - started


def describe(values: list[float]) -> str:
    """``mean ± sample std (n)``."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {spread:.4f} (n={len(values)})"


def relative_difference(ours: list[float], theirs: list[float]) -> tuple[float, float]:
    """(mean ours / mean theirs - 1, its standard error from both spreads)."""
    mine, base = statistics.mean(ours), statistics.mean(theirs)

    def squared_error(values):
        return statistics.variance(values) / len(values) if len(values) > 1 else 0.0

    ratio = mine / base
    error = ratio * math.sqrt(
        squared_error(ours) / mine**2 + squared_error(theirs) / base**2
    )
    return ratio - 1, error


def summarise(records: list[dict]) -> None:
    """Print each side's FVE over seeds and its relative difference from
    SAEBench's."""
    for sae_id in sorted({r["sae_id"] for r in records}):
        mine = [r for r in records if r["sae_id"] == sae_id]
        sides = {}
        for record in mine:
            sides.setdefault(record["side"], []).append(record)
        print(f"{sae_id}: decoder variance explained")
        theirs = [r["fve"] for r in sides.get("saebench", [])]
        for side, runs in sides.items():
            values = [r["fve"] for r in runs]
            seconds = statistics.mean(r["seconds"] for r in runs)
            line = f"  {side:9s} {describe(values)}, {seconds:.1f} s per run"
            if theirs and side != "saebench":
                relative, error = relative_difference(values, theirs)
                line += f"; vs SAEBench {relative:+.2%} ± {error:.2%}"
            print(line)
        paired_summary(mine)
    print("(± after a difference: its standard error; target within ±1%)")


def paired_summary(records: list[dict]) -> None:
    """Per seed, ours / SAEBench's - 1 for the runs that shared start and
    batches: mean ± sample std and its standard error, and the cross scores."""
    theirs = {r["seed"]: r for r in records if r["side"] == "saebench"}
    pairs = [
        (r, theirs[r["seed"]])
        for r in records
        if r["side"].startswith("paired") and r["seed"] in theirs
    ]
    if not pairs:
        return
    relative = [mine["fve"] / base["fve"] - 1 for mine, base in pairs]
    mean = statistics.mean(relative)
    spread = statistics.stdev(relative) if len(relative) > 1 else 0.0
    error = spread / math.sqrt(len(relative))
    print(
        f"  paired ours/SAEBench - 1 per seed: {mean:+.3%} "
        f"± {spread:.3%} (std; standard error {error:.3%}; max |.| "
        f"{max(abs(v) for v in relative):.3%}; n={len(relative)})"
    )
    if len(relative) > 1:
        from scipy.stats import t

        half = t.ppf(0.975, len(relative) - 1) * error
        print(f"  its 95% t interval: [{mean - half:+.3%}, {mean + half:+.3%}]")
    scoring = [m["saebench_model_our_scorer"] / b["fve"] - 1 for m, b in pairs]
    training = [m["our_model_saebench_scorer"] / m["fve"] - 1 for m, _ in pairs]
    print(
        f"  same model, other scorer: SAEBench's model by ours "
        f"{statistics.mean(scoring):+.3%}; our model by SAEBench's, against ours "
        f"{statistics.mean(training):+.3%}; smallest final decoder-row cosine "
        f"{min(m['min_decoder_cosine'] for m, _ in pairs):.4f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saebench-wheel", help="unpacked sae_bench wheel")
    parser.add_argument("--sae-id", default="resid0-topk-1024")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument(
        "--side",
        choices=("both", "saebench", "ours", "reference", "paired"),
        default="both",
        help="paired: ours from SAEBench's start, on SAEBench's batches",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="OPTION=VALUE",
        help="change one of our meta-SAE options (JSON value): sampling='\"uniform\"'",
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="both sides (default: SAEBench's 1500)"
    )
    parser.add_argument(
        "--autocast", action="store_true", help="bf16 autocast on both sides"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--record", type=Path, help="append one JSON line per run")
    parser.add_argument(
        "--summarise", type=Path, nargs="+", help="only summarise --record files"
    )
    args = parser.parse_args()
    if args.summarise:
        lines = [
            line for path in args.summarise for line in path.read_text().splitlines()
        ]
        summarise([json.loads(line) for line in lines if line.strip()])
        return
    with_saebench = args.side in ("both", "saebench", "paired")
    if with_saebench and not args.saebench_wheel:
        parser.error("--saebench-wheel DIR is needed for --side both or saebench")
    torch.set_num_threads(args.threads)
    theirs_changes = {"autocast": args.autocast}
    our_changes = {"autocast": args.autocast, "threads": args.threads}
    for option in args.set:
        name, _, value = option.partition("=")
        our_changes[name] = json.loads(value)
    our_side = " ".join(["ours", *args.set])
    if args.steps is not None:
        theirs_changes["train_steps"] = our_changes["steps"] = args.steps
    print(f"changes from SAEBench's settings: {theirs_changes}")
    if with_saebench:
        main_module, eval_config = import_saebench(args.saebench_wheel)
    records, output = [], None
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        runs, extra = [], {}
        if args.side == "paired":
            theirs, ours, extra, output = paired_run(
                main_module, eval_config, args.sae_id, seed, theirs_changes, our_changes
            )
            runs = [("saebench", *theirs), (f"paired {our_side}", *ours)]
        elif with_saebench:
            sae = load_sae(DEMO_RELEASE, args.sae_id)
            fve, seconds, output = saebench_run(
                main_module, eval_config, sae, args.sae_id, seed, theirs_changes
            )
            runs.append(("saebench", fve, seconds))
        if args.side in ("both", "ours"):
            sae = load_sae(DEMO_RELEASE, args.sae_id)
            runs.append((our_side, *our_run(sae, seed, our_changes)))
        if args.side == "reference":
            runs.append(("reference", *reference_run(args.sae_id, seed, args.steps)))
        for side, fve, seconds in runs:
            record = {
                "sae_id": args.sae_id,
                "side": side,
                "seed": seed,
                "fve": fve,
                "seconds": seconds,
                "steps": args.steps or 1500,
                "autocast": args.autocast,
            }
            if side.startswith("paired"):
                record.update(extra)
            records.append(record)
            print(json.dumps(record), flush=True)
            if args.record:
                with args.record.open("a") as sink:
                    sink.write(json.dumps(record) + "\n")
    summarise(records)
    if output is not None:
        theirs_doc = json.loads(output.to_json())
        print("SAEBench's own top-level fields:", sorted(theirs_doc))
        print("its eval_config fields:", sorted(theirs_doc["eval_config"]))
    print("finished", time.strftime("%H:%M:%S"))


if __name__ == "__main__":
    main()
