"""Our L1 latent ranking against SAEBench's own torch L1 probe, on the same rows.

SAEBench (sae_bench 0.6.0, ``evals/absorption/k_sparse_probing.py`` and
``probing.py``) ranks latents for its k-sparse probes with one torch
``nn.Linear(d_sae, 26)`` trained on the SAE codes: binary cross-entropy per
letter with ``pos_weight = negatives / positives``, Adam (lr 0.01, weight
decay 1e-6, learning rate decayed exponentially to 1e-5 over 50 epochs),
mini-batches of 4096 shuffled rows, plus ``0.01 * mean over letters of
||w||_1`` per batch; the top-k latents are the k largest *signed* weights.
It is re-implemented here from that description (not imported: SAEBench pins
numpy<2) and compared with :func:`sae_lens_ext_absorption.probes.l1_ranking`
(liblinear's objective, solved exactly) on the training rows of our letter
sample: per letter, whether the top latent agrees and the overlap of the
top-k sets.

    python bench/compare_l1_probe.py                # planted letters + demo topk-1024
    python bench/compare_l1_probe.py --epochs 50    # SAEBench's default only
"""

from __future__ import annotations

import argparse
import math

import pandas as pd
import torch
from sae_lens import SAE
from sae_lens_ext_absorption import AbsorptionConfig
from sae_lens_ext_absorption.boundaries import previous_tokens
from sae_lens_ext_absorption.first_letter import (
    MIN_TEST_POSITIVES,
    MIN_TRAIN_POSITIVES,
    _split_by_token,
    candidate_codes,
    present_codes,
)
from sae_lens_ext_absorption.letters import LETTERS, LetterSampler
from sae_lens_ext_absorption.probes import l1_ranking
from sae_lens_ext_absorption.synthetic import planted_letters

from sae_lens_ext.demo import demo_eval_tokens, demo_sae_path, load_demo_model
from sae_lens_ext.shared_pass import model_activations
from sae_lens_ext.tokens import iter_token_batches


def saebench_l1_probe(codes, labels, *, l1=0.01, epochs=50, batch=4096, seed=0):
    """SAEBench's L1 multi-probe on dense codes ``[n, d]``: weights ``[p, d]``."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    labels = labels.float()
    probe = torch.nn.Linear(codes.shape[1], labels.shape[1])
    positives = labels.sum(0)
    loss_fn = torch.nn.BCEWithLogitsLoss(
        pos_weight=(len(labels) - positives) / positives
    )
    optimiser = torch.optim.Adam(probe.parameters(), lr=0.01, weight_decay=1e-6)
    gamma = math.exp(math.log(1e-5 / 0.01) / epochs)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimiser, gamma=gamma)
    for _ in range(epochs):
        order = torch.randperm(len(codes), generator=generator)
        for start in range(0, len(codes), batch):
            index = order[start : start + batch]
            optimiser.zero_grad()
            loss = loss_fn(probe(codes[index]), labels[index])
            loss = loss + l1 * probe.weight.abs().sum(-1).mean()
            loss.backward()
            optimiser.step()
        schedule.step()
    return probe.weight.detach()


def compare(
    sample, d_sae: int, *, max_k: int = 10, l1: float = 1e-3, epochs=50, seed=0
):
    """Per letter: top-1 agreement and top-k overlap of the two rankings."""
    train, test = _split_by_token(sample.tokens, 0.2, seed)
    labels = torch.nn.functional.one_hot(sample.letters, len(LETTERS)).bool()
    usable = (labels[train].sum(0) >= MIN_TRAIN_POSITIVES) & (
        labels[test].sum(0) >= MIN_TEST_POSITIVES
    )
    letters = usable.nonzero()[:, 0]
    labels = labels[train][:, letters]
    present, codes = present_codes(sample, train)
    ours = present[l1_ranking(codes, labels, l1=l1, max_k=max_k)]
    dense = candidate_codes(sample, present, d_sae)[train]
    weight = saebench_l1_probe(dense, labels, epochs=epochs, seed=seed)
    theirs = present[weight.topk(min(max_k, len(present)), dim=1).indices]
    rows = []
    for index, letter in enumerate(letters.tolist()):
        a, b = ours[index].tolist(), theirs[index].tolist()
        rows.append(
            {
                "letter": LETTERS[letter],
                "positives": int(labels[:, index].sum()),
                "top1_same": a[0] == b[0],
                "top5_overlap": len(set(a[:5]) & set(b[:5])) / 5,
                f"top{max_k}_overlap": len(set(a) & set(b)) / len(a),
                "ours_top3": a[:3],
                "saebench_top3": b[:3],
            }
        )
    return pd.DataFrame(rows)


def demo_sample(sae_id: str, n_tokens: int):
    """The absorption analysis's letter sample on the demo release."""
    model = load_demo_model()
    sae = SAE.load_from_disk(demo_sae_path(sae_id))
    config = AbsorptionConfig()
    sampler = LetterSampler(
        model.tokenizer,
        max_rows=config.letter_rows,
        rows_per_token=config.rows_per_token,
        n_codes=config.codes_per_row,
    )
    for acts in model_activations(
        model,
        sae.cfg.metadata.hook_name,
        iter_token_batches(demo_eval_tokens(), 32, n_tokens),
        skip_bos=True,
    ):
        with torch.no_grad():
            codes = sae.encode(acts.sae_in)
        sampler.update(acts.tokens, acts.sae_in, codes, previous_tokens(acts))
    return sae, sampler


def planted_sample():
    """The planted first-letter setup's rows as a letter sample."""
    planted = planted_letters()
    sampler = LetterSampler(
        planted.tokenizer, max_rows=10**6, rows_per_token=10**6, n_codes=32
    )
    with torch.no_grad():
        acts = planted.sae.encode(planted.sae_in)
    sampler.update(planted.tokens, planted.sae_in, acts)
    return planted.sae, sampler


def summary(name: str, table: pd.DataFrame, max_k: int) -> str:
    return (
        f"{name}: {len(table)} letters; top-1 latent the same for "
        f"{int(table['top1_same'].sum())}/{len(table)}; mean top-5 overlap "
        f"{table['top5_overlap'].mean():.2f}; mean top-{max_k} overlap "
        f"{table[f'top{max_k}_overlap'].mean():.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sae-id", default="resid0-topk-1024")
    parser.add_argument("--tokens", type=int, default=65_536)
    parser.add_argument("--max-k", type=int, default=10)
    parser.add_argument(
        "--epochs",
        default="50,1000",
        help="SAEBench probe epochs to compare (50 is SAEBench's default)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name, (sae, sampler) in {
        "planted letters": planted_sample(),
        f"demo {args.sae_id}": demo_sample(args.sae_id, args.tokens),
    }.items():
        for epochs in map(int, args.epochs.split(",")):
            table = compare(
                sampler.rows(), int(sae.cfg.d_sae), max_k=args.max_k, epochs=epochs
            )
            print(summary(f"{name}, {epochs} epochs", table, args.max_k))
            print(table.to_string(index=False))
        counts = sampler.counts.metrics()
        print(
            f"  labelled {counts['labelled_fraction']:.1%} of "
            f"{counts['rows_seen']} rows ({sampler.letters.convention.name})"
        )


if __name__ == "__main__":
    main()
