"""MDL: streaming histograms vs the naive way (store everything, then histogram).

Both sides see the same generated sparse SAE codes (TopK-like, ``--l0`` active
latents per token with a Zipf-like firing distribution) and compute every
latent's entropy at one precision.  The codes are generated once, into one
safetensors file per chunk; each side runs in its own subprocess reading them
chunk by chunk, and its peak memory is the peak resident set size (sampled
every 2 ms) above the level after imports.  Prints times, tokens/s, peak
memory and ratios.  The two sides take turns for ``--repeats`` rounds
(streaming, naive, streaming, ...); times and memory are medians with their
min-max range, and the speed-up is the median of the round-by-round ratios.

    python bench/bench_mdl.py                       # 1M tokens x 16k latents
    python bench/bench_mdl.py --tokens 100000       # quicker
    python bench/bench_mdl.py --repeats 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from timing import Spread, alternate, paired_ratio, write_json


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


def write_chunks(args, folder: Path) -> None:
    """Generate the codes once, one safetensors file per chunk."""
    codes = chunks(args.tokens, args.d_sae, args.l0, args.chunk)
    for i, (latents, values, n) in enumerate(codes):
        save_file(
            {"latents": latents, "values": values, "n": torch.tensor([n])},
            folder / f"{i:05d}.safetensors",
        )


def read_chunks(folder: Path):
    """Yield ``(latents, values, n)`` from the chunk files, in order."""
    for path in sorted(folder.glob("*.safetensors")):
        chunk = load_file(path)
        yield chunk["latents"], chunk["values"], int(chunk["n"])


def streaming(args) -> tuple[torch.Tensor, float]:
    """Our way: bincount each chunk into per-latent histograms."""
    from sae_lens_ext_mdl import QuantisedHistograms

    hist = QuantisedHistograms(args.d_sae, args.precision)
    elapsed = 0.0
    for latents, values, n in read_chunks(args.data):
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
    for latents, values, n in read_chunks(args.data):
        start = time.perf_counter()
        kept_latents.append(latents)
        kept_values.append(values)
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


class RSSPeak:
    """Peak resident memory (KiB) above the level at entry, sampled every 2 ms."""

    def __enter__(self):
        self.base = self.peak = current_rss_kb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, current_rss_kb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_kb())
        self.peak_kb = self.peak - self.base


def current_rss_kb() -> int:
    """This process's resident set size now, in KiB (Linux)."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() // 1024


def child(method: str, args) -> None:
    """Run one side, print JSON with its time and peak memory."""
    import sae_lens_ext_mdl  # noqa: F401  (imported by both sides, before the baseline)

    torch.set_num_threads(args.threads)
    with RSSPeak() as rss:
        entropy, seconds = {"streaming": streaming, "naive": naive}[method](args)
    peak = rss.peak_kb
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
    parser.add_argument(
        "--repeats", type=int, default=3, help="alternating rounds (median reported)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", choices=["streaming", "naive"])
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args)
        return
    runs: dict[str, list[dict]] = {"streaming": [], "naive": []}
    with tempfile.TemporaryDirectory() as folder:
        write_chunks(args, Path(folder))

        def side(method: str):
            def run_once() -> float:
                cmd = [sys.executable, __file__, "--child", method, "--data", folder]
                cmd += sys.argv[1:]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode:
                    sys.exit(f"the {method} side failed:\n{out.stderr}")
                runs[method].append(json.loads(out.stdout.strip().splitlines()[-1]))
                return runs[method][-1]["seconds"]

            return run_once

        times = alternate({m: side(m) for m in runs}, args.repeats)
    memory = {m: Spread(tuple(r["peak_mb"] for r in rs)) for m, rs in runs.items()}
    bits = {m: rs[-1]["bits"] for m, rs in runs.items()}
    speedup = paired_ratio(times["naive"], times["streaming"])
    less_memory = paired_ratio(
        memory["naive"],
        Spread(tuple(max(mb, 1.0) for mb in memory["streaming"].samples)),
    )
    same = abs(bits["streaming"] - bits["naive"]) < 1e-6 * bits["naive"]
    print(
        f"{args.tokens:,} tokens x {args.d_sae:,} latents, L0 {args.l0}, "
        f"precision {args.precision}, {args.threads} thread(s); median of "
        f"{args.repeats} alternating run(s) per side (min-max)"
    )
    for name in runs:
        print(
            f"{name:>9}: {times[name].text()}, "
            f"{args.tokens / times[name].median:,.0f} tokens/s, "
            f"peak +{memory[name].text(unit=' MB', digits=0)}, "
            f"{bits[name]:.4f} bits/token"
        )
    print(
        f"speed-up {speedup.text(unit='x', digits=1)}, "
        f"memory {less_memory.text(unit='x less', digits=1)}, same answer: {same}"
    )
    write_json(
        args.json,
        {
            "tokens": args.tokens,
            "seconds": times,
            "peak_mb": memory,
            "bits": bits,
            "speedup": speedup,
            "memory_ratio": less_memory,
            "same_answer": same,
        },
    )


if __name__ == "__main__":
    main()
