"""Agreement: our absorption at ``--preset saebench`` vs SAEBench's absorption eval.

End to end on one SAE: SAEBench's own first-letter pipeline (its k-sparse
probing experiment, then its feature-absorption experiment, aggregated as its
``run_eval`` does), imported from an unpacked ``sae_bench`` wheel (``pip
download sae-bench --no-deps`` and unzip: it cannot be installed beside
numpy 2), against our first-letter absorption at ``--preset saebench`` on the
same SAE.  SAEBench's ``run_eval`` downloads its model by name, so its two
experiment functions are called directly with the model the release
provides; everything else (prompts, probes, thresholds, aggregation over the
letters whose probe F1 exceeds 0.6) is SAEBench's.

    python bench/bench_saebench_absorption.py --saebench-wheel /tmp/sbw/unpacked \\
        --release RELEASE --sae-id SAE_ID
    python bench/bench_saebench_absorption.py --saebench-wheel DIR     # the demo release
    python bench/bench_saebench_absorption.py --saebench-wheel DIR --our-rows text

SAEBench's feature-absorption calculator refuses prompts of different token
lengths.  With ``--vocabulary fixed-length`` (the default) the in-context
lines of its prompts come from the words of SAEBench's alphabetic vocabulary
whose line has one token of word and one of answer, so every prompt it scores
has the same length; its probe stage keeps every word (it needs all 26
letters) and pads its batches on the left (``--padding-side``).  SAEBench's
code runs unchanged on those lists (``bench/saebench_absorption_rows.py``).
``all`` gives both stages every word, and SAEBench's second stage then stops
on a tokenizer that splits some answers.  On the demo release the words the
model never saw spelled are left out of both lists (``--spelling-seen``).

``--our-rows saebench`` (the default) gives our method the same words and
prompts: the activations SAEBench saved for its probe, with its train/test
split of the words; our probes, k-sparse ranking and scoring are ours.
``--our-rows text`` runs ``sae-lens-ext run -p absorption --preset saebench``
on the run's own text instead (our product's path: other words, other rows).

Prints both sides' ``mean_full_absorption_score`` and
``mean_absorption_fraction_score``, their differences (target: within ±0.06,
SAEBench's own acceptance tolerance) and the per-letter table, and exits
non-zero when either side cannot score (fewer than 20 letters with a good
probe: the model cannot spell) or a difference is outside the tolerance.
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
from saebench_absorption_rows import (
    RestrictedVocabulary,
    comparison_vocabularies,
    probe_folder,
    prompt_lengths,
    saebench_probe_rows,
)
from saebench_wheel import add_wheel

from sae_lens_ext import load_model_for_sae, load_sae, run
from sae_lens_ext.demo import DEMO_RELEASE, demo_release_info
from sae_lens_ext.presets import preset_config, preset_overrides
from sae_lens_ext.runner import DEFAULT_N_TOKENS

TOLERANCE = 0.06
METRICS = ("mean_full_absorption_score", "mean_absorption_fraction_score")
PER_LETTER = ("full_absorption_rate", "mean_absorption_fraction")
# the per-letter table: absorption, probe-positive test words, ground-truth
# probe F1, main latents and the test F1 of the k-sparse probe on them
COLUMNS = (
    *PER_LETTER,
    "num_probe_true_positives",
    "probe_f1",
    "main_latents",
    "sparse_f1",
)


def word_position(tokenizer, template: str) -> int:
    """The word's position from the prompt's end, as SAEBench's
    ``prompt_token_pos`` (-6 for GPT-2's tokenizer and its default template)."""
    suffix = template.split("{word}", 1)[1]
    return -(len(tokenizer.encode(suffix, add_special_tokens=False)) + 1)


def saebench_absorption(model, sae, name: str, args, workdir: Path):
    """SAEBench's metrics and per-letter table, or (None, reason)."""
    from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig

    config = AbsorptionEvalConfig(
        model_name=str(sae.cfg.metadata.model_name), **args.saebench_set
    )
    if args.saebench_set:
        print(f"SAEBench's settings changed: {args.saebench_set}")
    position = args.prompt_token_pos or word_position(
        model.tokenizer, config.prompt_template
    )
    print(f"SAEBench prompt {config.prompt_template!r}, word at position {position}")
    # SAEBench reads the word at a fixed position from each prompt's end;
    # where its prompts differ in length, right padding would move the word
    padding = model.tokenizer.padding_side
    model.tokenizer.padding_side = args.padding_side
    try:
        if args.words is None:
            return saebench_experiments(model, sae, name, config, position, workdir)
        with RestrictedVocabulary(*args.words):
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
    folder = probe_folder(workdir / "probes", model.cfg.model_name, sae.cfg.hook_layer)
    print(
        f"SAEBench probe prompts, tokens: {dict(prompt_lengths(folder, model.tokenizer))}"
    )
    probe_f1 = probing.set_index("letter")["f1_probe"]
    good = set(probe_f1.index[probe_f1 > config.min_GT_probe_f1])
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
    letters = absorption_main._aggregate_results_df(raw).set_index("letter")
    letters["probe_f1"] = probe_f1
    splits = probing.set_index("letter")
    letters["main_latents"] = splits["split_feats"].map(
        lambda f: ", ".join(map(str, f))
    )
    letters["sparse_f1"] = [
        splits.loc[
            letter, f"f1_sparse_sae_{max(len(splits.loc[letter, 'split_feats']), 1)}"
        ]
        for letter in letters.index
    ]
    letters = letters.loc[sorted(good & set(letters.index))]
    metrics = {
        "mean_full_absorption_score": float(letters["full_absorption_rate"].mean()),
        "mean_absorption_fraction_score": float(
            letters["mean_absorption_fraction"].mean()
        ),
        "letters": len(letters),
        "mean_probe_f1_all_letters": float(probe_f1.mean()),
    }
    return metrics, letters[list(COLUMNS)]


def our_absorption_on_saebench_rows(model, sae, args, workdir: Path):
    """Our first-letter absorption at the saebench preset on SAEBench's own
    probe prompts and split."""
    from sae_lens_ext_absorption.config import AbsorptionConfig
    from sae_lens_ext_absorption.first_letter import first_letter_absorption

    settings = preset_overrides("saebench")["absorption"]
    # SAEBench's k-sparse epochs, when changed for its side, hold for ours too
    epochs = args.saebench_set.get("k_sparse_probe_num_epochs")
    if epochs is not None:
        settings["sparse_probe_epochs"] = int(epochs)
    config = AbsorptionConfig(**settings)
    layer = int(sae.cfg.metadata.hook_name.split(".")[1])
    folder = probe_folder(workdir / "probes", model.cfg.model_name, layer)
    rows, split, missed = saebench_probe_rows(
        folder, model.tokenizer, sae, config.codes_per_row
    )
    print(
        f"ours on SAEBench's rows: {len(split[0])} train and {len(split[1])} test "
        f"words; codes beyond codes_per_row dropped: {missed}"
    )
    result = first_letter_absorption(
        rows,
        sae,
        config,
        seed=args.seed,
        split=split,
        token_text=model.tokenizer.decode,
    )
    table = result.letters.set_index("letter")
    good = table[
        (table["probe_f1"] >= config.min_probe_f1) & (table["probe_true_positives"] > 0)
    ]
    metrics = {
        "mean_full_absorption_score": result.metrics["mean_absorption_rate"],
        "mean_absorption_fraction_score": result.metrics["mean_absorption_fraction"],
        "letters": result.metrics["letters_evaluated"],
        "mean_probe_f1_all_letters": result.metrics["mean_probe_f1"],
    }
    letters = good.rename(
        columns={
            "absorption_rate": "full_absorption_rate",
            "absorption_fraction": "mean_absorption_fraction",
            "probe_true_positives": "num_probe_true_positives",
        }
    )
    return metrics, letters[list(COLUMNS)]


def our_absorption_on_text(release, sae_id, sae, model, args, out_dir: Path):
    """Our SAEBench-format absorption metrics and letters from a run on the
    release's text, or (None, reason)."""
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
    return metrics, details[[*PER_LETTER, "num_probe_true_positives"]]


def restrict_words(model, args) -> None:
    """Set ``args.words`` to the probe stage's words and the absorption
    stage's in-context words (None: SAEBench's own vocabulary for both)."""
    from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig

    if args.vocabulary == "all":
        args.words = None
        return
    excluded = []
    if args.spelling_seen:
        excluded = demo_release_info()["spelling"]["unseen_word_ids"]
    template = AbsorptionEvalConfig().prompt_template
    probe_words, in_context, counts = comparison_vocabularies(
        model.tokenizer, template, excluded
    )
    args.words = (probe_words, in_context)
    letters = sorted({w.strip()[0].lower() for w in in_context})
    print(f"vocabulary: {counts}; in-context letters: {''.join(letters)}")


def compare(theirs, their_letters, ours, our_letters) -> bool:
    """Print the per-letter table and the differences; True when both means
    lie within the tolerance."""
    table = their_letters.join(
        our_letters, how="outer", lsuffix="_saebench", rsuffix="_ours"
    )
    print(table.round(3).to_string())
    both = table.dropna(
        subset=[f"{m}_{s}" for m in PER_LETTER for s in ("saebench", "ours")]
    )
    for metric in PER_LETTER:
        difference = both[f"{metric}_ours"] - both[f"{metric}_saebench"]
        print(
            f"per letter, {metric}: {len(both)} letters on both sides, difference "
            f"mean {difference.mean():+.4f}, max |.| {difference.abs().max():.4f}, "
            f"{int((difference.abs() <= TOLERANCE).sum())} within ±{TOLERANCE}"
        )
    if "main_latents_ours" in both:  # not in the SAEBench-format file of a text run
        same = [
            set(a.split(", ")) == set(b.split(", "))
            for a, b in zip(
                both["main_latents_saebench"], both["main_latents_ours"], strict=True
            )
        ]
        print(f"same main latents (as sets): {sum(same)} of {len(both)} letters")
    inside_all = True
    for metric in METRICS:
        difference = ours[metric] - theirs[metric]
        inside = abs(difference) <= TOLERANCE
        inside_all &= inside
        print(
            f"{metric}: SAEBench {theirs[metric]:.4f} ({theirs['letters']} letters), "
            f"ours {ours[metric]:.4f} ({ours['letters']} letters), difference "
            f"{difference:+.4f} ({'within' if inside else 'OUTSIDE'} ±{TOLERANCE})"
        )
    return inside_all


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saebench-wheel", required=True, help="unpacked sae_bench")
    parser.add_argument("--release", default=DEMO_RELEASE)
    parser.add_argument("--sae-id", default="resid0-topk-1024")
    parser.add_argument(
        "--vocabulary",
        choices=("fixed-length", "all"),
        default="fixed-length",
        help="fixed-length: the absorption stage's in-context lines only from "
        "words with one-token word and answer, so its prompts have one length",
    )
    parser.add_argument(
        "--spelling-seen",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="leave out the demo words the model never saw spelled "
        "(default: on for the demo release)",
    )
    parser.add_argument(
        "--our-rows",
        choices=("saebench", "text"),
        default="saebench",
        help="saebench: our method on SAEBench's probe prompts and split; "
        "text: a run on the release's text",
    )
    parser.add_argument("--n-tokens", type=int, default=DEFAULT_N_TOKENS, help="text")
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
    parser.add_argument(
        "--saebench-set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="change a field of SAEBench's AbsorptionEvalConfig (JSON value): "
        "k_sparse_probe_num_epochs=500",
    )
    parser.add_argument("--out", type=Path, help="keep both sides' files here")
    args = parser.parse_args()
    args.saebench_set = {
        name: json.loads(value)
        for name, _, value in (option.partition("=") for option in args.saebench_set)
    }
    if args.spelling_seen is None:
        args.spelling_seen = args.release == DEMO_RELEASE
    if args.spelling_seen and args.release != DEMO_RELEASE:
        parser.error("--spelling-seen needs the demo release's list of unseen words")
    add_wheel(args.saebench_wheel)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    sae = load_sae(args.release, args.sae_id)
    model = load_model_for_sae(sae, args.release)
    restrict_words(model, args)
    name = f"{args.release}_{args.sae_id}".replace("/", "_")
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.out or Path(scratch)
        started = time.perf_counter()
        with torch.enable_grad():
            theirs, their_letters = saebench_absorption(
                model, sae, name, args, workdir / "saebench"
            )
        their_seconds = time.perf_counter() - started
        started = time.perf_counter()
        if args.our_rows == "saebench":
            ours, our_letters = our_absorption_on_saebench_rows(
                model, sae, args, workdir / "saebench"
            )
        else:
            ours, our_letters = our_absorption_on_text(
                args.release, args.sae_id, sae, model, args, workdir / "ours"
            )
        our_seconds = time.perf_counter() - started
    print(f"SAEBench: {theirs or their_letters} ({their_seconds:.0f} s)")
    print(f"ours:     {ours or our_letters} ({our_seconds:.0f} s)")
    if theirs is None or ours is None:
        sys.exit("cannot compare: a side could not score this SAE (see above)")
    inside = compare(theirs, their_letters, ours, our_letters)
    print("finished", time.strftime("%H:%M:%S"))
    sys.exit(0 if inside else 1)


if __name__ == "__main__":
    main()
