"""MDL: streaming histograms vs the naive way (store everything, then histogram).

Both sides see the same generated sparse SAE codes (TopK-like, ``--l0`` active
latents per token with a Zipf-like firing distribution) and compute every
latent's entropy at one precision.  Each side runs in its own subprocess so
its peak memory (max RSS above the process's baseline after imports and data
generation set-up) is its own.  Prints times, tokens/s, peak memory and ratios.

    python bench/bench_mdl.py                       # 1M tokens x 16k latents
    python bench/bench_mdl.py --tokens 100000       # quicker
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def chunks(n_tokens: int, d_sae: int, l0: int, chunk: int, seed: int = 0):
    """Yield ``(latents, values, n)`` for sparse codes, deterministically.

    Each token's ``l0`` distinct latents are a Gumbel top-k draw from Zipf-like
    firing rates, generated 256 tokens at a time to keep memory small.
    """
    generator = torch.Generator().manual_seed(seed)
    log_rates = -0.8 * torch.log(torch.arange(1, d_sae + 1).float())
    for start in range(0, n_tokens, chunk):
        n = min(chunk, n_tokens - start)
        parts = []
        for sub in range(0, n, 256):
            m = min(256, n - sub)
            gumbel = -torch.log(-torch.log(torch.rand(m, d_sae, generator=generator)))
            parts.append((log_rates + gumbel).topk(l0, dim=1).indices)
        latents = torch.cat(parts)
        values = torch.empty(n, l0).exponential_(1.0, generator=generator) * 2
        yield latents.flatten(), values.flatten(), n


def streaming(args) -> tuple[torch.Tensor, float]:
    """Our way: bincount each chunk into per-latent histograms."""
    from sae_lens_ext_mdl import QuantisedHistograms

    hist = QuantisedHistograms(args.d_sae, args.precision)
    elapsed = 0.0
    for latents, values, n in chunks(args.tokens, args.d_sae, args.l0, args.chunk):
        start = time.perf_counter()
        hist.add(latents, values, n)
        elapsed += time.perf_counter() - start
    start = time.perf_counter()
    entropy = hist.entropy()
    return entropy, elapsed + time.perf_counter() - start


def naive(args) -> tuple[torch.Tensor, float]:
    """The naive way: keep every activation, then a histogram per latent.

    Dense storage (tokens x d_sae floats) would need 64 GB at 1M x 16k, so
    the naive side already keeps only the non-zeros (COO), then counts each
    latent's quantised values with ``torch.unique``.
    """
    kept_latents, kept_values, total, elapsed = [], [], 0, 0.0
    for latents, values, n in chunks(args.tokens, args.d_sae, args.l0, args.chunk):
        start = time.perf_counter()
        kept_latents.append(latents.clone())
        kept_values.append(values.clone())
        total += n
        elapsed += time.perf_counter() - start
    start = time.perf_counter()
    latents, values = torch.cat(kept_latents), torch.cat(kept_values)
    del kept_latents, kept_values
    order = torch.argsort(latents, stable=True)
    latents, values = latents[order], values[order]
    bounds = torch.searchsorted(latents, torch.arange(args.d_sae + 1))
    entropy = torch.zeros(args.d_sae, dtype=torch.float64)
    for i in range(args.d_sae):
        v = values[bounds[i] : bounds[i + 1]]
        symbols = torch.floor(v.double() / args.precision)
        _, counts = torch.unique(symbols, return_counts=True)
        counts = torch.cat([counts, torch.tensor([total - len(v)])]).double()
        p = counts[counts > 0] / total
        entropy[i] = -(p * torch.log2(p)).sum()
    return entropy, elapsed + time.perf_counter() - start


def child(method: str, args) -> None:
    """Run one side, print JSON with its time and peak memory."""
    torch.set_num_threads(args.threads)
    # The generator's own memory (one chunk) is in the baseline.
    next(chunks(args.chunk, args.d_sae, args.l0, args.chunk, seed=1))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    entropy, seconds = {"streaming": streaming, "naive": naive}[method](args)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    print(
        json.dumps(
            {"seconds": seconds, "peak_mb": peak / 1024, "bits": entropy.sum().item()}
        )
    )


def main() -> None:
    """Run both sides in subprocesses and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--d-sae", type=int, default=16_384)
    parser.add_argument("--l0", type=int, default=48)
    parser.add_argument("--precision", type=float, default=0.05)
    parser.add_argument("--chunk", type=int, default=32_768)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--child", choices=["streaming", "naive"])
    args = parser.parse_args()
    if args.child:
        child(args.child, args)
        return
    results = {}
    for method in ("streaming", "naive"):
        cmd = [sys.executable, __file__, "--child", method, *sys.argv[1:]]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results[method] = json.loads(out.strip().splitlines()[-1])
    ours, peer = results["streaming"], results["naive"]
    print(
        f"{args.tokens:,} tokens x {args.d_sae:,} latents, L0 {args.l0}, precision {args.precision}"
    )
    for name, r in results.items():
        print(
            f"{name:>9}: {r['seconds']:.2f} s, {args.tokens / r['seconds']:,.0f} tokens/s, "
            f"peak +{r['peak_mb']:.0f} MB, {r['bits']:.4f} bits/token"
        )
    print(
        f"speed-up {peer['seconds'] / ours['seconds']:.1f}x, "
        f"memory {peer['peak_mb'] / max(ours['peak_mb'], 1):.1f}x less, "
        f"same answer: {abs(ours['bits'] - peer['bits']) < 1e-6 * peer['bits']}"
    )


if __name__ == "__main__":
    main()
