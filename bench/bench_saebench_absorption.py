"""Agreement: our absorption at ``--preset saebench`` vs SAEBench's absorption eval.

End to end on one SAE: SAEBench's own first-letter pipeline (its k-sparse
probing experiment, then its feature-absorption experiment, aggregated as its
``run_eval`` does), imported from an unpacked ``sae_bench`` wheel (``pip
download sae-bench --no-deps`` and unzip: it cannot be installed beside
numpy 2), against ``sae-lens-ext run -p absorption --preset saebench`` on the
same SAE and model.  SAEBench's ``run_eval`` downloads its model by name, so
its two experiment functions are called directly with the model the release
provides; everything else (prompts, probes, thresholds, aggregation over the
letters whose probe F1 exceeds 0.6) is SAEBench's.

    python bench/bench_saebench_absorption.py --saebench-wheel /tmp/sbw/unpacked \\
        --release RELEASE --sae-id SAE_ID
    python bench/bench_saebench_absorption.py --saebench-wheel DIR     # the demo release

Prints both sides' ``mean_full_absorption_score`` and
``mean_absorption_fraction_score``, their differences (target: within ±0.06,
SAEBench's own acceptance tolerance) and the per-letter table, and exits
non-zero when either side cannot score (fewer than 20 letters with a good
probe: the model cannot spell) or a difference is outside the tolerance.
It needs a model that spells first letters (demo release v2's does).
SAEBench's prompt batches are padded on the left (``--padding-side``): it
reads the word at a fixed position from each prompt's end, and prompts of
different token lengths padded on the right move it.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from saebench_wheel import add_wheel

from sae_lens_ext import load_model_for_sae, load_sae, run
from sae_lens_ext.demo import DEMO_RELEASE
from sae_lens_ext.presets import preset_config
from sae_lens_ext.runner import DEFAULT_N_TOKENS

TOLERANCE = 0.06
METRICS = ("mean_full_absorption_score", "mean_absorption_fraction_score")


def word_position(tokenizer, template: str) -> int:
    """The word's position from the prompt's end, as SAEBench's
    ``prompt_token_pos`` (-6 for GPT-2's tokenizer and its default template)."""
    suffix = template.split("{word}", 1)[1]
    return -(len(tokenizer.encode(suffix, add_special_tokens=False)) + 1)


def saebench_absorption(wheel_dir: str, model, sae, name: str, args, workdir: Path):
    """SAEBench's metrics and per-letter table, or (None, reason)."""
    add_wheel(wheel_dir)
    from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig

    config = AbsorptionEvalConfig(model_name=str(sae.cfg.metadata.model_name))
    position = args.prompt_token_pos or word_position(
        model.tokenizer, config.prompt_template
    )
    print(f"SAEBench prompt {config.prompt_template!r}, word at position {position}")
    # SAEBench reads the word at a fixed position from each prompt's end in
    # batches the tokenizer pads; where its prompts tokenize to different
    # lengths (88-92 tokens on the demo's), right padding moves the word in
    # all but the longest prompts of a batch, and its probe sees other tokens
    padding = model.tokenizer.padding_side
    model.tokenizer.padding_side = args.padding_side
    try:
        return saebench_experiments(model, sae, name, config, position, workdir)
    finally:
        model.tokenizer.padding_side = padding


def saebench_experiments(model, sae, name, config, position, workdir: Path):
    """SAEBench's two experiments and its aggregation over good letters."""
    from sae_bench.evals.absorption import main as absorption_main
    from sae_bench.evals.absorption.feature_absorption import (
        run_feature_absortion_experiment,
    )
    from sae_bench.evals.absorption.k_sparse_probing import (
        run_k_sparse_probing_experiment,
    )
    from sae_bench.sae_bench_utils import general_utils

    _, sae, _ = general_utils.load_and_format_sae(name, sae, "cpu")
    # the arguments SAEBench's two experiments take alike
    shared = {
        "model": model,
        "sae": sae,
        "layer": sae.cfg.hook_layer,
        "sae_name": name,
        "max_k_value": config.max_k_value,
        "prompt_template": config.prompt_template,
        "prompt_token_pos": position,
        "device": "cpu",
        "probes_dir": workdir / "probes",
        "force": True,
    }
    probing_dir = workdir / "k_sparse_probing"
    probing = run_k_sparse_probing_experiment(
        **shared,
        f1_jump_threshold=config.f1_jump_threshold,
        experiment_dir=probing_dir,
        k_sparse_probe_l1_decay=config.k_sparse_probe_l1_decay,
        k_sparse_probe_batch_size=config.k_sparse_probe_batch_size,
        k_sparse_probe_num_epochs=config.k_sparse_probe_num_epochs,
        eval_batch_size=config.eval_k_sparse_probe_batch_size,
        precalc_k_sparse_probe_sae_acts=config.precalc_k_sparse_probe_sae_acts,
    )
    good = set(probing.loc[probing["f1_probe"] > config.min_GT_probe_f1, "letter"])
    if len(good) < config.min_feats_for_eval:
        return None, (
            f"only {len(good)} letters have a probe F1 above "
            f"{config.min_GT_probe_f1} (SAEBench needs {config.min_feats_for_eval})"
        )
    raw = run_feature_absortion_experiment(
        **shared,
        experiment_dir=workdir / "feature_absorption",
        sparse_probing_experiment_dir=probing_dir,
        feature_split_f1_jump_threshold=config.f1_jump_threshold,
        batch_size=config.llm_batch_size,
    )
    letters = absorption_main._aggregate_results_df(raw)
    letters = letters[letters["letter"].isin(good)].set_index("letter")
    metrics = {
        "mean_full_absorption_score": float(letters["full_absorption_rate"].mean()),
        "mean_absorption_fraction_score": float(
            letters["mean_absorption_fraction"].mean()
        ),
        "letters": len(letters),
    }
    return metrics, letters[["full_absorption_rate", "mean_absorption_fraction"]]


def our_absorption(release, sae_id, sae, model, args, out_dir: Path):
    """Our SAEBench-format absorption metrics and letters, or (None, reason)."""
    output = run(
        release,
        sae_id,
        sae=sae,
        model=model,
        plugins="absorption",
        config=preset_config("saebench", None, "absorption"),
        out_dir=out_dir,
        n_tokens=args.n_tokens,
        seed=args.seed,
        overwrite=True,
    )
    path = output.run_dir / "saebench" / "absorption_first_letter.json"
    if not path.is_file():
        reason = output.summary.get("saebench", {}).get("absorption")
        return None, f"no SAEBench absorption file: {reason}"
    document = json.loads(path.read_text())
    mean = document["eval_result_metrics"]["mean"]
    details = pd.DataFrame(document["eval_result_details"]).set_index("first_letter")
    metrics = {name: float(mean[name]) for name in METRICS}
    metrics["letters"] = len(details)
    return metrics, details[["full_absorption_rate", "mean_absorption_fraction"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saebench-wheel", required=True, help="unpacked sae_bench")
    parser.add_argument("--release", default=DEMO_RELEASE)
    parser.add_argument("--sae-id", default="resid0-topk-1024")
    parser.add_argument("--n-tokens", type=int, default=DEFAULT_N_TOKENS, help="ours")
    parser.add_argument(
        "--padding-side",
        choices=("left", "right"),
        default="left",
        help="how SAEBench's prompt batches are padded (left: the word stays at "
        "its position from the end when prompts differ in length)",
    )
    parser.add_argument("--seed", type=int, default=42, help="both sides")
    parser.add_argument(
        "--prompt-token-pos",
        type=int,
        default=None,
        help="SAEBench's word position (default: from the tokenizer)",
    )
    parser.add_argument("--out", type=Path, help="keep both sides' files here")
    args = parser.parse_args()
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    sae = load_sae(args.release, args.sae_id)
    model = load_model_for_sae(sae, args.release)
    name = f"{args.release}_{args.sae_id}".replace("/", "_")
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.out or Path(scratch)
        started = time.perf_counter()
        with torch.enable_grad():
            theirs, their_letters = saebench_absorption(
                args.saebench_wheel, model, sae, name, args, workdir / "saebench"
            )
        their_seconds = time.perf_counter() - started
        started = time.perf_counter()
        ours, our_letters = our_absorption(
            args.release, args.sae_id, sae, model, args, workdir / "ours"
        )
        our_seconds = time.perf_counter() - started
    print(f"SAEBench: {theirs or their_letters} ({their_seconds:.0f} s)")
    print(f"ours:     {ours or our_letters} ({our_seconds:.0f} s)")
    if theirs is None or ours is None:
        sys.exit("cannot compare: a side could not score this SAE (see above)")
    table = their_letters.join(our_letters, lsuffix="_saebench", rsuffix="_ours")
    print(table.round(3).to_string())
    failed = False
    for metric in METRICS:
        difference = ours[metric] - theirs[metric]
        inside = abs(difference) <= TOLERANCE
        failed |= not inside
        print(
            f"{metric}: SAEBench {theirs[metric]:.4f}, ours {ours[metric]:.4f}, "
            f"difference {difference:+.4f} ({'within' if inside else 'OUTSIDE'} "
            f"±{TOLERANCE})"
        )
    print("finished", time.strftime("%H:%M:%S"))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
