"""LLC: our batched SGLD vs devinterp 2.x, same model, data and hyperparameters.

Two cases, each run on both sides in the same process, the sides taking turns
for ``--repeats`` rounds (medians with min-max, through ``bench/timing.py``):

- ``model``: the demo release's 2-layer TransformerLens model, every weight
  sampled, next-token cross-entropy on demo evaluation sequences (devinterp's
  native setting: a ``datasets.Dataset`` of ``input_ids`` and a per-token loss).
- ``sae``: the demo SAE ``resid0-topk-1024`` on its own activations, the
  normalised reconstruction loss of the ``llc`` analysis (for devinterp, row
  indices travel as ``input_ids`` and the loss looks the activations up).

Both sides use the same chains, draws, burn-in, step size, n*beta,
localization and minibatch size; ``L(w*)`` is the loss on all the data on both
sides (devinterp: ``num_init_loss_batches`` = one pass).  devinterp's own
``llc_mean`` averages burn-in steps too, so its estimate here is taken from its
per-draw losses (``sampling_loss``) after burn-in, the quantity we estimate.
Prints seconds, each run's speed-up over devinterp's best time, and both
estimates with their standard errors (over chains); ``--bf16`` adds our
bf16-autocast fast path, ``--threads 1,2`` runs both sides at each thread
count (on two cores, one torch thread leaves the other core to our noise
worker; which is faster depends on the size of the model).

    python bench/bench_llc.py                 # both cases, default sizes
    python bench/bench_llc.py --case sae --draws 200 --threads 1,2
    python bench/bench_llc.py --device cuda --chains 8   # both cases on a GPU

``--device cuda`` puts the model, the SAE and the data on the GPU for both
sides (devinterp's ``device`` argument); ``--threads`` is then ignored.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from timing import alternate, write_json

from sae_lens_ext.extras import require


def devinterp_llc(model, dataset, loss_fn, args, n_rows) -> tuple[float, float, float]:
    """devinterp's estimate and SE from its per-draw losses, and its seconds."""
    sample = require("devinterp.slt.sampling", "bench", "The devinterp side").sample

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        samples = sample(
            model,
            dataset,
            {},
            lr=args.step_size,
            n_beta=args.nbeta,
            localization=args.localization,
            num_chains=args.chains,
            num_draws=args.draws,
            num_burnin_steps=args.burnin,
            batch_size=args.batch_size,
            num_init_loss_batches=n_rows // args.batch_size,
            init_seed=args.seed,
            loss_fn=loss_fn,
            device=args.device,
            output_path=Path(tmp) / "samples.zarr",
        )
        draws = samples.dataset.sampling_loss.mean(dim=["batch", "token_pos"])
        init_loss = float(samples.dataset.init_loss.values.mean())
        per_chain = args.nbeta * (draws.mean(dim="draw").values - init_loss)
        synchronise(args.device)
        seconds = time.perf_counter() - start
    return float(per_chain.mean()), se(per_chain), seconds


def se(per_chain: np.ndarray) -> float:
    """Standard error of the mean over chains."""
    return float(np.std(per_chain, ddof=1) / math.sqrt(len(per_chain)))


def ours(model, loss_fn, data, args, autocast_dtype=None):
    """Our estimate, its SE and seconds."""
    from sae_lens_ext_llc import estimate_llc

    start = time.perf_counter()
    result = estimate_llc(
        model,
        loss_fn,
        data,
        num_chains=args.chains,
        num_draws=args.draws,
        num_burnin=args.burnin,
        step_size=args.step_size,
        nbeta=args.nbeta,
        localization=args.localization,
        batch_size=args.batch_size,
        seed=args.seed,
        autocast_dtype=autocast_dtype,
        track_acceptance=False,
        check_curvature=False,
        threads=torch.get_num_threads(),
        progress=False,
    )
    synchronise(args.device)
    return result.llc, result.llc_se, time.perf_counter() - start


def synchronise(device: str) -> None:
    """Wait for queued GPU work, so wall-clock times are complete."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def model_case(args):
    """The demo TransformerLens model on demo sequences, per-token cross-entropy."""
    from datasets import Dataset

    lm_loss = require("devinterp.slt.lm_loss", "bench", "The devinterp side")
    lm_cross_entropy_loss = lm_loss.lm_cross_entropy_loss

    from sae_lens_ext.demo import demo_eval_tokens, load_demo_model

    model = load_demo_model().to(args.device)
    tokens = demo_eval_tokens(args.sequences)[:, : args.context + 1].contiguous()
    tokens = tokens.to(args.device)

    def per_token_loss(net, input_ids):
        return lm_cross_entropy_loss(net(input_ids, return_type="logits"), input_ids)

    def mean_loss(net, input_ids):
        return per_token_loss(net, input_ids).mean()

    dataset = Dataset.from_dict({"input_ids": tokens.cpu().tolist()})
    dataset = dataset.with_format("torch")
    return model, mean_loss, tokens, dataset, per_token_loss


def sae_case(args):
    """The demo SAE on its own activations (the ``llc`` analysis's loss)."""
    from datasets import Dataset
    from sae_lens import SAE
    from sae_lens_ext_llc import sae_loss_fn

    from sae_lens_ext.demo import demo_eval_tokens, demo_sae_path, load_demo_model

    sae = SAE.load_from_disk(demo_sae_path(args.sae_id))
    model = load_demo_model()
    tokens = demo_eval_tokens(max(1, args.sae_tokens // 127 + 1))
    hook = sae.cfg.metadata.hook_name
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=hook)
    activations = cache[hook][:, 1:].reshape(-1, sae.cfg.d_in)[: args.sae_tokens]
    sae, activations = sae.to(args.device), activations.to(args.device)
    loss = sae_loss_fn(float(activations.pow(2).sum(-1).mean()))

    def per_row_loss(net, input_ids):
        rows = activations[input_ids[:, 0].to(activations.device)]
        error = (net.decode(net.encode(rows)) - rows).pow(2).sum(-1, keepdim=True)
        return error / float(activations.pow(2).sum(-1).mean())

    ids = torch.arange(len(activations))
    dataset = Dataset.from_dict({"input_ids": torch.stack([ids, ids], 1).tolist()})
    return sae, loss, activations, dataset.with_format("torch"), per_row_loss


def run_case(name, args):
    """Both sides on one case at each thread count; print every run and the
    ratio of the two sides' best times."""
    build = model_case if name == "model" else sae_case
    model, loss_fn, data, dataset, per_token = build(args)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(
        f"\n[{name}] {n_params:,} params, {len(data)} rows, {args.chains} chains x "
        f"({args.burnin} burn-in + {args.draws} draws), batch {args.batch_size}, "
        f"eps {args.step_size:g}, nbeta {args.nbeta:g}, gamma {args.localization:g}"
    )
    times, estimates = {}, {}

    def timed(label, estimate):
        def run_once() -> float:
            llc, llc_se, seconds = estimate()
            estimates[label] = (llc, llc_se)
            return seconds

        return run_once

    for threads in args.threads:
        if args.device == "cpu":
            torch.set_num_threads(threads)
        sides = {f"ours fp32, {threads} thr": lambda: ours(model, loss_fn, data, args)}
        if args.bf16:
            sides[f"ours bf16, {threads} thr"] = lambda: ours(
                model, loss_fn, data, args, torch.bfloat16
            )
        sides[f"devinterp, {threads} thr"] = lambda: devinterp_llc(
            model, dataset, per_token, args, len(data)
        )
        sides = {label: timed(label, side) for label, side in sides.items()}
        times.update(alternate(sides, args.repeats))  # the sides take turns
    peer = min(
        (t for t in times if t.startswith("devinterp")), key=lambda t: times[t].median
    )
    print(f"  median of {args.repeats} alternating run(s) per side (min-max)")
    for label, spread in times.items():
        llc, llc_se = estimates[label]
        gap = abs(llc - estimates[peer][0]) / math.hypot(llc_se, estimates[peer][1])
        print(
            f"  {label:20s} {spread.text(unit=' s', digits=1):28s} LLC {llc:10.3f} ± "
            f"{llc_se:.3f}   vs devinterp's best x{times[peer].median / spread.median:5.1f}"
            f"   |diff| / SE {gap:.2f}"
        )
    return times, estimates


def main():
    """Parse flags and run the cases."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", choices=["model", "sae", "both"], default="both")
    parser.add_argument(
        "--chains", type=int, default=4, help="chains on both sides (8+ on a GPU)"
    )
    parser.add_argument(
        "--device", default="cpu", help="cpu or cuda (both sides run there)"
    )
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--burnin", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--step-size", type=float, default=1e-4)
    parser.add_argument("--nbeta", type=float, default=30.0)
    parser.add_argument("--localization", type=float, default=100.0)
    parser.add_argument("--sequences", type=int, default=64, help="model case")
    parser.add_argument("--context", type=int, default=32, help="model case")
    parser.add_argument("--sae-id", default="resid0-topk-1024")
    parser.add_argument("--sae-tokens", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bf16", action="store_true", help="also time bf16 autocast")
    parser.add_argument(
        "--repeats", type=int, default=3, help="alternating rounds (median reported)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--threads",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[torch.get_num_threads()],
        help="comma-separated torch thread counts to run both sides at, e.g. 1,2",
    )
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA build of torch and a visible GPU")
    if args.device.startswith("cuda"):
        args.threads = [torch.get_num_threads()]
    warnings.filterwarnings("ignore")
    torch.manual_seed(args.seed)
    print(f"device {args.device}; torch threads: {', '.join(map(str, args.threads))}")
    record = {}
    for name in ("model", "sae") if args.case == "both" else (args.case,):
        times, estimates = run_case(name, args)
        record[name] = {"seconds": times, "llc": estimates}
    write_json(args.json, record)


if __name__ == "__main__":
    main()
