"""Which ground-truth probe moves the absorption numbers: SAEBench's or ours.

Reads the folder a ``bench_saebench_absorption.py --out DIR`` run kept and
scores SAEBench's probe-stage test words with our scorer
(:func:`sae_lens_ext_absorption.scoring.absorption_scores`), SAEBench's main
latents for every letter, once along SAEBench's probe direction and once
along ours (fitted as ``first_letter_absorption`` fits it, on SAEBench's
train words).  Prints, per letter, the cosine between the two directions, the
full-absorption rate and absorption fraction under each, the mean projection
of the letter's probe-positive words on each direction, and SAEBench's own
numbers from its absorption stage (which re-prompts the same words).

    python bench/saebench_absorption_probes.py --saebench-wheel DIR --out RUN_DIR \\
        --sae-id resid1-topk-1024
"""

from __future__ import annotations

import argparse
import glob
import string
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sae_lens_ext_absorption.first_letter import GROUND_TRUTH_ITERATIONS
from sae_lens_ext_absorption.probes import fit_probes
from sae_lens_ext_absorption.scoring import absorption_scores
from saebench_absorption_rows import probe_folder
from saebench_wheel import add_wheel

from sae_lens_ext import load_sae
from sae_lens_ext.demo import DEMO_RELEASE


def split_latents(metrics: pd.DataFrame, letter: str, max_k=10, jump=0.03) -> list:
    """SAEBench's main latents of a letter by its F1-jump rule."""
    best, latents = -100.0, []
    for k in range(1, max_k + 1):
        f1 = metrics.loc[letter, f"f1_sparse_sae_{k}"]
        if f1 <= best + jump:
            break
        best, latents = f1, list(metrics.loc[letter, f"sparse_sae_k_{k}_feats"])
    return latents


def score(x, codes, w_dec, direction, main: list, config=(0.4, 0.1)):
    """Our scorer's full-absorption rate, absorption fraction and mean
    projection on rows ``x`` along a unit ``direction``."""
    norms = w_dec.norm(dim=1)
    cosines = (w_dec / norms[:, None]) @ direction
    contributions = codes * norms * cosines
    is_main = torch.zeros(w_dec.shape[0], dtype=torch.bool)
    is_main[main] = True
    other = ~is_main & (codes > 0)
    projection = x @ direction
    scores = absorption_scores(
        projection,
        (contributions * is_main).sum(1),
        (codes[:, is_main] > 0).any(1),
        torch.where(other, contributions, 0.0),
        torch.where(other, cosines.expand_as(codes), 0.0),
        share_threshold=config[0],
        cos_threshold=config[1],
    )
    return (
        float(scores.full.float().mean()),
        float(scores.fraction.mean()),
        float(projection.mean()),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saebench-wheel", required=True, help="unpacked sae_bench")
    parser.add_argument("--out", type=Path, required=True, help="the bench's --out")
    parser.add_argument("--sae-id", default="resid0-topk-1024")
    args = parser.parse_args()
    add_wheel(args.saebench_wheel)
    sae = load_sae(DEMO_RELEASE, args.sae_id)
    layer = int(sae.cfg.metadata.hook_name.split(".")[1])
    root = args.out / "saebench"
    folder = probe_folder(root / "probes", str(sae.cfg.metadata.model_name), layer)
    data = np.load(folder / "data.npz")
    x_train, x_test = (
        torch.from_numpy(data[f"X_{s}"]).float() for s in ("train", "test")
    )
    y_train, y_test = (
        torch.from_numpy(data[f"y_{s}"]).long() for s in ("train", "test")
    )
    theirs = torch.load(folder / "probe.pth", weights_only=False, map_location="cpu")
    theirs = theirs.float()
    torch.manual_seed(42)
    ours = fit_probes(
        x_train,
        torch.nn.functional.one_hot(y_train, 26).bool(),
        max_iter=GROUND_TRUTH_ITERATIONS,
    )
    metrics = pd.read_parquet(
        glob.glob(str(root / "k_sparse_probing" / "*" / "*metrics.parquet"))[0]
    ).set_index("letter")
    stage = pd.read_parquet(
        glob.glob(str(root / "feature_absorption" / "*" / "*.parquet"))[0]
    )
    w_dec = sae.W_dec.detach().float()
    with torch.no_grad():
        codes = sae.encode(x_test).float()
        their_logits, our_logits = theirs(x_test), ours.logits(x_test)
    records = []
    for i, letter in enumerate(string.ascii_lowercase):
        own = stage[stage["letter"] == letter]
        if metrics.loc[letter, "f1_probe"] <= 0.6 or own.empty:
            continue
        main_latents = split_latents(metrics, letter)
        their_u = theirs.weights[i].detach().float()
        their_u = their_u / their_u.norm()
        our_u = ours.directions()[i]
        record = {"letter": letter, "cosine": float(their_u @ our_u)}
        for side, u, logits in (
            ("their_probe", their_u, their_logits),
            ("our_probe", our_u, our_logits),
        ):
            rows = ((y_test == i) & (logits[:, i] > 0)).nonzero()[:, 0]
            full, fraction, projection = score(
                x_test[rows], codes[rows], w_dec, u, main_latents
            )
            record |= {
                f"full_{side}": full,
                f"fraction_{side}": fraction,
                f"projection_{side}": projection,
            }
        record["full_saebench"] = float(own["is_full_absorption"].mean())
        record["fraction_saebench"] = float(own["absorption_fraction"].mean())
        records.append(record)
    table = pd.DataFrame(records).set_index("letter")
    print(table.round(3).to_string())
    print("mean over letters:")
    print(table.mean().round(4).to_string())


if __name__ == "__main__":
    main()
