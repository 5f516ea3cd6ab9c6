"""Absorption agreement with seed noise, and where a gap comes from.

Reads the folder a ``bench_saebench_absorption.py --out DIR`` run kept
(SAEBench's probe-stage prompts' activations and word split, its k-sparse
probing tables and its feature-absorption rows) and, on those same rows and
split, for each probe seed:

* **SAEBench's probe training, its own code** (imported from the unpacked
  wheel): ``train_linear_probe_for_task`` (the ground-truth probe, at the
  arguments ``train_and_save_probes`` gives it) and ``train_k_sparse_probes``
  (its L1 ranking and scikit-learn k-sparse probes), under
  ``torch.manual_seed(seed)``; main latents by its F1-jump rule on the test
  words;
* **ours at ``--preset saebench``**: ``first_letter_absorption`` with
  ``probe_training="saebench"`` and ``seed``.

Both are scored by one scorer (:func:`saebench_absorption_probes.score`,
ours; it reproduces SAEBench's absorption stage, see ``docs/saebench.md``)
on the probe-stage test words, so the spread over seeds on each side is the
probe-training noise and the difference of the means is the implementation
difference.  Each seed's pair is also cross-scored (SAEBench's probe
direction with our main latents and the reverse) to say which stage moves
the numbers.  The end-to-end numbers of the stored SAEBench run (its own
absorption stage, which re-prompts the test words) are printed alongside.

    python bench/saebench_absorption_seeds.py --saebench-wheel DIR --run RUN \\
        --sae-id resid1-topk-1024 --sparse-epochs 500 --seeds 0 1 2 --record R
    python bench/saebench_absorption_seeds.py --saebench-wheel DIR --summarise R
"""

from __future__ import annotations

import argparse
import glob
import json
import string
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sae_lens_ext_absorption.config import AbsorptionConfig
from sae_lens_ext_absorption.first_letter import first_letter_absorption
from saebench_absorption_probes import score, split_latents
from saebench_absorption_rows import probe_folder, saebench_probe_rows
from saebench_wheel import add_wheel

from sae_lens_ext import load_model_for_sae, load_sae
from sae_lens_ext.demo import DEMO_RELEASE
from sae_lens_ext.presets import preset_overrides

TOLERANCE = 0.06
MIN_PROBE_F1 = 0.6
MAX_K = 10
LETTERS = string.ascii_lowercase


def saebench_training(sae, folder: Path, epochs: int, seed: int):
    """SAEBench's ground-truth probe and k-sparse main latents, its code."""
    from sae_bench.evals.absorption.k_sparse_probing import train_k_sparse_probes
    from sae_bench.evals.absorption.probing import train_linear_probe_for_task

    data = np.load(folder / "data.npz")
    frames = {s: pd.read_csv(folder / f"{s}_df.csv") for s in ("train", "test")}
    torch.manual_seed(seed)
    probe, _ = train_linear_probe_for_task(
        train_df=frames["train"],
        test_df=frames["test"],
        device=torch.device("cpu"),
        train_activations=np.asarray(data["X_train"], dtype=np.float32),
        test_activations=np.asarray(data["X_test"], dtype=np.float32),
        num_classes=26,
        batch_size=64,  # train_and_save_probes's default
        num_epochs=50,
        lr=1e-2,
    )
    train_labels = list(
        zip(frames["train"]["token"], frames["train"]["answer_class"], strict=True)
    )
    k_probes = train_k_sparse_probes(
        sae,
        train_labels,
        torch.from_numpy(np.asarray(data["X_train"], dtype=np.float32)),
        ks=list(range(1, MAX_K + 1)),
        l1_decay=0.01,
        batch_size=4096,
        num_epochs=epochs,
        precalc_sae_acts=True,
    )
    x_test = torch.from_numpy(np.asarray(data["X_test"], dtype=np.float32))
    y_test = torch.from_numpy(np.asarray(data["y_test"])).long()
    with torch.no_grad():
        codes = sae.encode(x_test).float()
        logits = probe(x_test).float()
    f1 = {}
    for i, letter in enumerate(LETTERS):
        truth = y_test == i
        for k in range(1, MAX_K + 1):
            predicted = k_probes[k][i](codes) > 0
            f1[(letter, k)] = _f1(predicted, truth)
    metrics = pd.DataFrame(
        {
            **{
                f"f1_sparse_sae_{k}": [f1[(letter, k)] for letter in LETTERS]
                for k in range(1, MAX_K + 1)
            },
            **{
                f"sparse_sae_k_{k}_feats": [
                    k_probes[k][i].feature_ids.tolist() for i in range(26)
                ]
                for k in range(1, MAX_K + 1)
            },
        },
        index=list(LETTERS),
    )
    main = {letter: split_latents(metrics, letter) for letter in LETTERS}
    weights = probe.weights.detach().float()
    return {
        "directions": weights / weights.norm(dim=1, keepdim=True),
        "positive": logits > 0,
        "probe_f1": [_f1(logits[:, i] > 0, y_test == i) for i in range(26)],
        "main": main,
    }


def _f1(predicted: torch.Tensor, truth: torch.Tensor) -> float:
    tp = int((predicted & truth).sum())
    fp = int((predicted & ~truth).sum())
    fn = int((~predicted & truth).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def ours(sae, rows, split, epochs: int, seed: int, x_test):
    """Our preset's probes on the same rows: directions, test positives,
    probe F1 and main latents per letter."""
    config = AbsorptionConfig(
        **{**preset_overrides("saebench")["absorption"], "sparse_probe_epochs": epochs}
    )
    result = first_letter_absorption(rows, sae, config, seed=seed, split=split)
    table = result.letters.reset_index(drop=True)
    directions = torch.zeros(26, x_test.shape[1])
    positive = torch.zeros(len(x_test), 26, dtype=torch.bool)
    logits = result.probes.logits(x_test)
    probe_f1 = [0.0] * 26
    main = {}
    for position, row in table.iterrows():
        i = LETTERS.index(row["letter"])
        directions[i] = result.probes.directions()[position]
        positive[:, i] = logits[:, position] > 0
        probe_f1[i] = float(row["probe_f1"])
        main[row["letter"]] = [int(v) for v in str(row["main_latents"]).split(", ")]
    return {
        "directions": directions,
        "positive": positive,
        "probe_f1": probe_f1,
        "main": main,
        "metrics": result.metrics,
    }


def scored(x_test, y_test, codes, w_dec, probe, main_from, positive):
    """Mean full absorption and fraction over the probe's good letters, our
    scorer, along ``probe``'s directions with ``main_from``'s main latents,
    on the test words ``positive`` (``[n, 26]``) calls positive."""
    full, fraction = [], []
    for i, letter in enumerate(LETTERS):
        if probe["probe_f1"][i] <= MIN_PROBE_F1 or letter not in main_from["main"]:
            continue
        rows = ((y_test == i) & positive[:, i]).nonzero()[:, 0]
        if rows.numel() == 0:
            continue
        a, b, _ = score(
            x_test[rows],
            codes[rows],
            w_dec,
            probe["directions"][i],
            main_from["main"][letter],
        )
        full.append(a)
        fraction.append(b)
    return float(np.mean(full)), float(np.mean(fraction)), len(full)


def stored_end_to_end(run: Path, folder: Path) -> dict:
    """The stored SAEBench run's own numbers (its absorption stage)."""
    from sae_bench.evals.absorption import main as absorption_main

    probing = pd.read_parquet(
        glob.glob(str(run / "k_sparse_probing" / "*" / "*metrics.parquet"))[0]
    ).set_index("letter")
    raw = pd.read_parquet(
        glob.glob(str(run / "feature_absorption" / "*" / "*.parquet"))[0]
    )
    letters = absorption_main._aggregate_results_df(raw).set_index("letter")
    good = [c for c in letters.index if probing.loc[c, "f1_probe"] > MIN_PROBE_F1]
    letters = letters.loc[good]
    return {
        "full": float(letters["full_absorption_rate"].mean()),
        "fraction": float(letters["mean_absorption_fraction"].mean()),
        "letters": len(letters),
    }


def merged_records(paths: list[Path]) -> list[dict]:
    """Records of the same SAE and epochs merged (their seeds pooled)."""
    merged: dict[tuple, dict] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            key = (entry["sae_id"], entry["sparse_epochs"])
            if key in merged:
                merged[key]["seeds"] += entry["seeds"]
            else:
                merged[key] = entry
    return list(merged.values())


def summarise(paths: list[Path], stored: bool) -> None:
    """A markdown table, one line per recorded SAE and epoch setting (the
    seeds of several records of one SAE and setting pooled); ``stored`` adds
    the stored SAEBench run's own end-to-end numbers (meaningful when that
    run used the same epochs)."""
    entries = merged_records(paths)
    extra = " SAEBench end to end, its run (full / fraction) |" if stored else ""
    print(
        "| SAE | k-sparse epochs | full: SAEBench / ours (mean ± std, seeds) | "
        "difference ± s.e. | fraction: SAEBench / ours | difference ± s.e. | "
        "largest gap between two SAEBench seeds (full / fraction) | "
        "within ±0.06 (full / fraction) |" + extra
    )
    print("|---|---|---|---|---|---|---|---|" + ("---|" if stored else ""))
    for entry in entries:
        cells = [entry["sae_id"], str(entry["sparse_epochs"])]
        gaps, inside = [], []
        for metric in ("full", "fraction"):
            theirs = [r["saebench"][metric] for r in entry["seeds"]]
            mine = [r["ours"][metric] for r in entry["seeds"]]
            n = len(theirs)
            error = np.sqrt(np.var(theirs, ddof=1) / n + np.var(mine, ddof=1) / n)
            difference = np.mean(mine) - np.mean(theirs)
            cells.append(
                f"{np.mean(theirs):.3f} ± {np.std(theirs, ddof=1):.3f} / "
                f"{np.mean(mine):.3f} ± {np.std(mine, ddof=1):.3f} ({n})"
            )
            cells.append(f"{difference:+.3f} ± {error:.3f}")
            gaps.append(f"{max(theirs) - min(theirs):.3f}")
            inside.append("yes" if abs(difference) <= TOLERANCE else "no")
        cells += [" / ".join(gaps), " / ".join(inside)]
        if stored:
            end = entry["stored_end_to_end"]
            cells.append(f"{end['full']:.3f} / {end['fraction']:.3f}")
        print("| " + " | ".join(cells) + " |")
    print()
    print(
        "| SAE | k-sparse epochs | probe cosine (SAEBench vs ours, mean) | same main "
        "latents | full: swap the probe / swap the main latents | fraction: swap "
        "the probe / swap the main latents |"
    )
    print("|---|---|---|---|---|---|")
    for entry in entries:
        seeds = entry["seeds"]
        cells = [
            entry["sae_id"],
            str(entry["sparse_epochs"]),
            f"{np.mean([r['probe_cosine_mean'] for r in seeds]):.3f}",
            ", ".join(
                f"{r['same_main_latents']}/{r['letters_compared']}" for r in seeds
            ),
        ]
        for metric in ("full", "fraction"):
            # mean |change| of SAEBench's number when only its probe, or
            # only its main latents, are replaced by ours
            probe = np.mean(
                [
                    abs(r["our_probe_their_latents"][metric] - r["saebench"][metric])
                    for r in seeds
                ]
            )
            latents = np.mean(
                [
                    abs(r["their_probe_our_latents"][metric] - r["saebench"][metric])
                    for r in seeds
                ]
            )
            cells.append(f"{probe:.3f} / {latents:.3f}")
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saebench-wheel", required=True, help="unpacked sae_bench")
    parser.add_argument("--run", type=Path, help="the bench's --out")
    parser.add_argument("--sae-id", default="resid0-topk-1024")
    parser.add_argument(
        "--sparse-epochs",
        type=int,
        default=50,
        help="SAEBench's k_sparse_probe_num_epochs, on both sides",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--record", type=Path, help="append a JSON line here")
    parser.add_argument(
        "--summarise", type=Path, nargs="+", help="print the table of records"
    )
    parser.add_argument(
        "--with-stored",
        action="store_true",
        help="with --summarise: add the stored runs' end-to-end numbers",
    )
    args = parser.parse_args()
    if args.summarise:
        summarise(args.summarise, args.with_stored)
        return
    torch.set_num_threads(1)  # small problems: a second thread only spins
    add_wheel(args.saebench_wheel)
    from sae_bench.sae_bench_utils import general_utils

    started = time.perf_counter()
    sae = load_sae(DEMO_RELEASE, args.sae_id)
    model = load_model_for_sae(sae, DEMO_RELEASE)
    layer = int(sae.cfg.metadata.hook_name.split(".")[1])
    root = args.run / "saebench"
    folder = probe_folder(root / "probes", str(sae.cfg.metadata.model_name), layer)
    rows, split, _ = saebench_probe_rows(folder, model.tokenizer, sae, 32)
    name = f"{DEMO_RELEASE}_{args.sae_id}".replace("/", "_")
    _, their_sae, _ = general_utils.load_and_format_sae(name, sae, "cpu")
    data = np.load(folder / "data.npz")
    x_test = torch.from_numpy(np.asarray(data["X_test"], dtype=np.float32))
    y_test = torch.from_numpy(np.asarray(data["y_test"])).long()
    w_dec = sae.W_dec.detach().float()
    with torch.no_grad():
        codes = sae.encode(x_test).float()
    records = []
    for seed in args.seeds:
        theirs = saebench_training(their_sae, folder, args.sparse_epochs, seed)
        mine = ours(sae, rows, split, args.sparse_epochs, seed, x_test)
        record = {"seed": seed}
        for label, probe, main_from in (
            ("saebench", theirs, theirs),
            ("ours_scored_here", mine, mine),
            ("their_probe_our_latents", theirs, mine),
            ("our_probe_their_latents", mine, theirs),
        ):
            full, fraction, n = scored(
                x_test, y_test, codes, w_dec, probe, main_from, probe["positive"]
            )
            record[label] = {"full": full, "fraction": fraction, "letters": n}
        record["ours"] = {
            "full": mine["metrics"]["mean_absorption_rate"],
            "fraction": mine["metrics"]["mean_absorption_fraction"],
            "letters": mine["metrics"]["letters_evaluated"],
        }
        shared = [c for c in LETTERS if c in mine["main"]]
        cosines = [
            float(theirs["directions"][i] @ mine["directions"][i])
            for i in (LETTERS.index(c) for c in shared)
        ]
        record["probe_cosine_mean"] = float(np.mean(cosines))
        record["same_main_latents"] = sum(
            set(theirs["main"][c]) == set(mine["main"][c]) for c in shared
        )
        record["letters_compared"] = len(shared)
        records.append(record)
        print(json.dumps(record))
    summary = {"sae_id": args.sae_id, "sparse_epochs": args.sparse_epochs}
    for side in ("saebench", "ours"):
        for metric in ("full", "fraction"):
            values = [r[side][metric] for r in records]
            summary[f"{side}_{metric}_mean"] = float(np.mean(values))
            summary[f"{side}_{metric}_std"] = float(np.std(values, ddof=1))
    for metric in ("full", "fraction"):
        difference = summary[f"ours_{metric}_mean"] - summary[f"saebench_{metric}_mean"]
        summary[f"difference_{metric}"] = difference
        summary[f"within_{metric}"] = abs(difference) <= TOLERANCE
    summary["stored_end_to_end"] = stored_end_to_end(root, folder)
    summary["seeds"] = records
    summary["seconds"] = time.perf_counter() - started
    print(json.dumps({k: v for k, v in summary.items() if k != "seeds"}, indent=1))
    if args.record:
        with args.record.open("a") as handle:
            handle.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
