"""The registry of documented numbers that ``scripts/refresh_docs.py`` re-measures.

A *producer* is one command (a benchmark in ``bench/`` or a worked example)
run once per refresh; it returns a dict.  A *number* is one marked value in
the docs: the producer it comes from, how to read it from the producer's
dict, how the docs write it, and the noise tolerance a re-measurement must
fall within (``None`` for context that is rewritten but never checked: the
load average, the date, a min-max range).

The producers' commands live in ``scripts/docs_producers.py``.
Tiers: ``cheap`` producers take seconds and run in the test suite
(``tests/test_docs_numbers.py``); ``standard`` ones take minutes and run by
default; ``expensive`` ones (tens of minutes) only with ``--tier all`` or
``--only``.  ``demo`` marks producers whose numbers change with the embedded
demo release.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from docs_producers import (
    MDL_COMPARE_ARGS,
    demo_release_record,
    demo_run,
    json_command,
    mdl_compare,
)


@dataclass(frozen=True)
class Tolerance:
    """How far a re-measurement may move: ``abs + rel * |measured|``, or a factor."""

    rel: float = 0.0
    abs: float = 0.0
    factor: float | None = None

    def accepts(self, documented: float, measured: float) -> bool:
        """Whether ``documented`` is within this tolerance of ``measured``."""
        if self.factor is not None:
            return measured / self.factor <= documented <= measured * self.factor
        return abs(documented - measured) <= self.abs + self.rel * abs(measured)

    def describe(self) -> str:
        """A short human-readable form, e.g. ``±30%`` or ``x/÷ 3``."""
        if self.factor is not None:
            return f"within a factor {self.factor:g}"
        parts = [f"±{self.rel:.0%}"] if self.rel else []
        parts += [f"±{self.abs:g}"] if self.abs else []
        return " + ".join(parts) or "exact"


@dataclass(frozen=True)
class Producer:
    """One command whose output backs documented numbers."""

    command: str
    run: Callable[[], dict]
    tier: str  # cheap | standard | expensive
    demo: bool


@dataclass(frozen=True)
class Number:
    """One documented number: its producer, reader, format and tolerance."""

    producer: str
    value: Callable[[dict], Any]
    format: Callable[[Any], str]
    tolerance: Tolerance | None
    noise: str = ""


# -- noise, stated once -------------------------------------------------------

SHARED_SECONDS = Tolerance(factor=3.0)
SHARED_SECONDS_NOISE = (
    "absolute times on the shared 2-core machine move 2-3x with the load average"
)
PAIRED_RATIO = Tolerance(rel=0.35)
PAIRED_RATIO_NOISE = (
    "medians of round-by-round ratios of alternated runs moved by up to 35% "
    "between invocations under load (MDL 100k: 9.7x, then 6.6x twice)"
)
PEAK_MB = Tolerance(rel=0.25)
PEAK_MB_NOISE = "peak RSS sampled every 2 ms varies with allocator timing"
DETERMINISTIC = "deterministic for a seed: only the printed rounding may differ"


def rounded(digits: int) -> Tolerance:
    """The tolerance of a deterministic number printed with ``digits`` decimals."""
    return Tolerance(abs=0.51 * 10.0**-digits)


# -- formats ------------------------------------------------------------------


def fixed(digits: int, unit: str = "") -> Callable[[float], str]:
    """Format with ``digits`` decimals, thousands separators and a unit suffix."""
    return lambda value: f"{value:,.{digits}f}{unit}"


def significant(figures: int) -> Callable[[float], str]:
    """Format with ``figures`` significant figures (``0.0289``, ``-0.202``)."""
    return lambda value: f"{value:.{figures}g}"


def span(digits: int, unit: str = "") -> Callable[[tuple[float, float]], str]:
    """Format a (low, high) pair as ``low-high``."""
    return lambda pair: f"{pair[0]:,.{digits}f}-{pair[1]:,.{digits}f}{unit}"


def spread_range(path: str) -> Callable[[dict], tuple[float, float]]:
    """Read a Spread's (min, max) from a nested result dict, ``a.b`` paths."""

    def read(result: dict) -> tuple[float, float]:
        node = dig(result, path)
        return node["min"], node["max"]

    return read


def median(path: str) -> Callable[[dict], float]:
    """Read a Spread's median from a nested result dict."""
    return lambda result: dig(result, path)["median"]


def dig(result: dict, path: str):
    """``result['a']['b']`` for ``path`` ``'a.b'``."""
    for part in path.split("."):
        result = result[part]
    return result


def iso_date(value: str) -> str:
    """Dates are written as they come (ISO)."""
    return value


# -- the registry -------------------------------------------------------------

PRODUCERS: dict[str, Producer] = {
    "mdl_100k": Producer(
        "python bench/bench_mdl.py --tokens 100000 --threads 1 --repeats 3",
        json_command(
            "bench/bench_mdl.py",
            "--tokens",
            "100000",
            "--threads",
            "1",
            "--repeats",
            "3",
        ),
        tier="standard",
        demo=False,
    ),
    "mdl_1m": Producer(
        "python bench/bench_mdl.py --tokens 1000000 --threads 1 --repeats 3",
        json_command(
            "bench/bench_mdl.py",
            "--tokens",
            "1000000",
            "--threads",
            "1",
            "--repeats",
            "3",
        ),
        tier="standard",
        demo=False,
    ),
    "meta_demo": Producer(
        "python bench/bench_meta_sae.py --decoder demo --steps 2000 --threads 1 "
        "--repeats 3",
        json_command(
            "bench/bench_meta_sae.py",
            "--decoder",
            "demo",
            "--steps",
            "2000",
            "--threads",
            "1",
            "--repeats",
            "3",
        ),
        tier="standard",
        demo=True,
    ),
    "stage_meta_sae": Producer(
        "python scripts/stage_timing.py -p meta_sae --repeats 3",
        json_command("scripts/stage_timing.py", "-p", "meta_sae", "--repeats", "3"),
        tier="standard",
        demo=True,
    ),
    "stage_tokenized": Producer(
        "python scripts/stage_timing.py -p tokenized --repeats 2",
        json_command("scripts/stage_timing.py", "-p", "tokenized", "--repeats", "2"),
        tier="standard",
        demo=True,
    ),
    "stage_tokenized_no_sae": Producer(
        "python scripts/stage_timing.py -p tokenized --set tokenized.train_sae=false "
        "--repeats 2",
        json_command(
            "scripts/stage_timing.py",
            "-p",
            "tokenized",
            "--set",
            "tokenized.train_sae=false",
            "--repeats",
            "2",
        ),
        tier="standard",
        demo=True,
    ),
    "demo_run": Producer(
        "sae-lens-ext run --out DIR (every plugin on the demo release)",
        demo_run,
        tier="standard",
        demo=True,
    ),
    "mdl_compare": Producer(
        "sae-lens-ext " + " ".join(MDL_COMPARE_ARGS),
        mdl_compare,
        tier="cheap",
        demo=True,
    ),
    **{
        f"absorption_widths_{layer}": Producer(
            f"python bench/absorption_widths.py --layer {layer}",
            json_command("bench/absorption_widths.py", "--layer", layer),
            tier="standard",
            demo=True,
        )
        for layer in ("resid0", "resid1")
    },
    "demo_release": Producer(
        "read sae_lens_ext/demo_release/release.json (written by "
        "python scripts/build_demo_release.py) and the release's size",
        demo_release_record,
        tier="cheap",
        demo=True,
    ),
}


def _context(producer: str, value, fmt) -> Number:
    return Number(producer, value, fmt, None, "context: rewritten, not checked")


def _rounds(producer: str, path: str) -> Number:
    """How many rounds a median is over (context)."""
    return _context(producer, lambda r: len(dig(r, path)["samples"]), fixed(0))


def _seconds(producer: str, path: str, digits: int = 1) -> Number:
    return Number(
        producer,
        median(path),
        fixed(digits, " s"),
        SHARED_SECONDS,
        SHARED_SECONDS_NOISE,
    )


def _ratio(producer: str, path: str) -> Number:
    return Number(
        producer, median(path), fixed(1, "x"), PAIRED_RATIO, PAIRED_RATIO_NOISE
    )


def _mdl_numbers(name: str, size: str, full: bool) -> dict[str, Number]:
    """The MDL benchmark's numbers at one size; ``full``: times and rates too."""
    numbers = {
        f"mdl.{size}.ours_mb": Number(
            name, median("peak_mb.streaming"), fixed(0), PEAK_MB, PEAK_MB_NOISE
        ),
        f"mdl.{size}.naive_mb": Number(
            name, median("peak_mb.naive"), fixed(0), PEAK_MB, PEAK_MB_NOISE
        ),
        f"mdl.{size}.speedup": _ratio(name, "speedup"),
        f"mdl.{size}.speedup.range": _context(name, spread_range("speedup"), span(1)),
        f"mdl.{size}.memory_ratio": Number(
            name, median("memory_ratio"), fixed(1, "x"), PEAK_MB, PEAK_MB_NOISE
        ),
        f"mdl.{size}.bits": Number(
            name, lambda r: r["bits"]["streaming"], fixed(4), rounded(4), DETERMINISTIC
        ),
        f"mdl.{size}.load": _context(name, lambda r: r["load"], span(1)),
    }
    if not full:
        return numbers
    for side, short in (("streaming", "ours"), ("naive", "naive")):
        numbers[f"mdl.{size}.{short}_s"] = _seconds(name, f"seconds.{side}", 2)
        numbers[f"mdl.{size}.{short}_s.range"] = _context(
            name, spread_range(f"seconds.{side}"), span(2)
        )
        numbers[f"mdl.{size}.{short}_tps"] = Number(
            name,
            lambda r, side=side: r["tokens"] / r["seconds"][side]["median"],
            fixed(0),
            SHARED_SECONDS,
            SHARED_SECONDS_NOISE,
        )
    numbers[f"mdl.{size}.naive_bits"] = Number(
        name, lambda r: r["bits"]["naive"], fixed(4), rounded(4), DETERMINISTIC
    )
    numbers[f"mdl.{size}.date"] = _context(name, lambda r: r["date"], iso_date)
    numbers[f"mdl.{size}.rounds"] = _rounds(name, "seconds.streaming")
    return numbers


def _meta_demo_numbers() -> dict[str, Number]:
    name = "meta_demo"
    steps = 2000
    numbers = {
        "meta.demo.ours_s": _seconds(name, "seconds.ours"),
        "meta.demo.peer_s": _seconds(name, "seconds.peer"),
        "meta.demo.ours_s.range": _context(name, spread_range("seconds.ours"), span(1)),
        "meta.demo.peer_s.range": _context(name, spread_range("seconds.peer"), span(1)),
        "meta.demo.speedup": Number(
            name, median("speedup"), fixed(2, "x"), PAIRED_RATIO, PAIRED_RATIO_NOISE
        ),
        "meta.demo.speedup.range": _context(name, spread_range("speedup"), span(2)),
        "meta.demo.load": _context(name, lambda r: r["load"], span(1)),
        "meta.demo.rows": Number(
            name,
            lambda r: r["rows"],
            fixed(0),
            rounded(0),
            "the demo SAE's live latents",
        ),
        "meta.demo.d_meta": Number(
            name, lambda r: r["d_meta"], fixed(0), rounded(0), "set from the row count"
        ),
        "meta.demo.date": _context(name, lambda r: r["date"], iso_date),
        "meta.demo.rounds": _rounds(name, "seconds.ours"),
    }
    for side in ("ours", "peer"):
        numbers[f"meta.demo.{side}_ms"] = Number(
            name,
            lambda r, side=side: 1e3 * r["seconds"][side]["median"] / steps,
            fixed(1),
            SHARED_SECONDS,
            SHARED_SECONDS_NOISE,
        )
        for field, digits, tolerance in (
            ("fvu_at_k", 4, Tolerance(abs=0.001)),
            ("dead", 0, Tolerance(abs=2)),
            ("own_threshold_l0", 2, Tolerance(abs=0.1)),
            ("own_threshold_fvu", 4, Tolerance(abs=0.001)),
        ):
            numbers[f"meta.demo.{side}.{field}"] = Number(
                name,
                lambda r, side=side, field=field: r["quality"][side][field],
                fixed(digits),
                tolerance,
                "seeded, yet two runs a few days apart moved our FVU by 1e-4 and "
                "SAE-Lens's own-threshold L0 (an EMA) from 4.05 to 3.98",
            )
    return numbers


def _stage_numbers() -> dict[str, Number]:
    numbers = {}
    for producer, key, stage in (
        ("stage_meta_sae", "stage.meta_sae", "meta_sae"),
        ("stage_tokenized", "stage.tokenized", "tokenized"),
        ("stage_tokenized_no_sae", "stage.tokenized_no_sae", "tokenized"),
    ):
        numbers[f"{key}.stage_s"] = _seconds(producer, stage)
        if stage != "meta_sae":  # the meta-SAE page gives the stage alone
            numbers[f"{key}.run_s"] = _seconds(producer, "run")
        numbers[f"{key}.load"] = _context(producer, lambda r: r["load"], span(1))
        numbers[f"{key}.rounds"] = _rounds(producer, "run")
    return numbers


MDL_COMPARE_COLUMNS = {  # short key: (comparison.csv column, decimals in the docs)
    "l0": ("l0", 1),
    "bits": ("bits_per_token", 1),
    "mse_q": ("mse_at_precision", 3),
    "mse": ("mse_unquantised", 3),
    "rel": ("mse_increase", None),  # three significant figures
    "bound": ("naive_bound_bits", 1),
    "dead": ("dead_latents", 0),
}


def _mdl_compare_numbers() -> dict[str, Number]:
    numbers = {}
    for sae in MDL_COMPARE_ARGS[2:6]:
        for short, (column, digits) in MDL_COMPARE_COLUMNS.items():
            numbers[f"mdl.compare.{sae}.{short}"] = Number(
                "mdl_compare",
                lambda r, sae=sae, column=column: float(r["table"][sae][column]),
                significant(3) if digits is None else fixed(digits),
                Tolerance(rel=0.005) if digits is None else rounded(digits),
                DETERMINISTIC,
            )
    numbers.update(_mdl_compare_derived())
    return numbers


def _mdl_compare_derived() -> dict[str, Number]:
    """The worked example's prose: bits per width doubling, the ReLU SAE's ratios."""

    def column(r: dict, sae: str, name: str) -> float:
        return float(r["table"][sae][name])

    def doubling_bits(r: dict) -> list[float]:
        widths = MDL_COMPARE_ARGS[2:5]  # the TopK SAEs, narrowest first
        bits = [column(r, sae, "bits_per_token") for sae in widths]
        return [bits[i + 1] - bits[i] for i in range(len(bits) - 1)]

    def relu_ratio(name: str) -> Callable[[dict], float]:
        return lambda r: (
            column(r, "resid0-relu-1024", name) / column(r, "resid0-topk-1024", name)
        )

    return {
        "mdl.compare.doubling_bits.min": Number(
            "mdl_compare",
            lambda r: min(doubling_bits(r)),
            fixed(1),
            rounded(1),
            DETERMINISTIC,
        ),
        "mdl.compare.doubling_bits.max": Number(
            "mdl_compare",
            lambda r: max(doubling_bits(r)),
            fixed(1),
            rounded(1),
            DETERMINISTIC,
        ),
        "mdl.compare.relu_l0_ratio": Number(
            "mdl_compare", relu_ratio("l0"), fixed(1), rounded(1), DETERMINISTIC
        ),
        "mdl.compare.relu_bits_ratio": Number(
            "mdl_compare",
            relu_ratio("bits_per_token"),
            fixed(1),
            rounded(1),
            DETERMINISTIC,
        ),
    }


def signed(digits: int) -> Callable[[float], str]:
    """With an explicit sign: ``+0.202``."""
    return lambda value: f"{value:+.{digits}f}"


THREADED_TRAINING = (
    "rounding, plus float differences when the trainer's thread count follows the "
    "load (seed-to-seed spread of the FVE: 0.006)"
)
LLC_NOISE = (
    "about 3 standard errors of the estimate (SE 0.021 on the first demo release)"
)

# (analysis, metric) -> (format, tolerance, noise[, scale]); key demo.<analysis>.<metric>
# (scale 100: a fraction the docs write as a percentage)
# A fraction printed as a percentage with one decimal (value x 100): deterministic for a
# seed, so only the printed rounding (0.05 points) may differ.
PERCENT_ONE_DECIMAL = (fixed(1, "%"), Tolerance(abs=0.051), DETERMINISTIC, 100)
# A meta-SAE fraction printed with three decimals: training threads reorder sums, so a
# rerun moves it by up to 0.003.
META_SAE_FRACTION = (fixed(3), Tolerance(abs=0.003), THREADED_TRAINING)
DEMO_RUN_METRICS = {
    ("meta_sae", "base_latents_used"): (fixed(0), rounded(0), DETERMINISTIC),
    ("meta_sae", "dead_base_latents_left_out"): (fixed(0), rounded(0), DETERMINISTIC),
    ("meta_sae", "d_meta"): (fixed(0), rounded(0), DETERMINISTIC),
    ("meta_sae", "mean_active_meta_latents"): (fixed(2), rounded(2), DETERMINISTIC),
    ("meta_sae", "fraction_variance_explained"): META_SAE_FRACTION,
    ("meta_sae", "null_fve"): META_SAE_FRACTION,
    ("meta_sae", "null_fve_std"): (fixed(3), Tolerance(abs=0.002), THREADED_TRAINING),
    ("meta_sae", "fve_above_null"): (
        signed(3),
        Tolerance(abs=0.004),
        THREADED_TRAINING,
    ),
    ("meta_sae", "frequency_weighted_fve"): META_SAE_FRACTION,
    ("meta_sae", "mean_reconstruction_cosine"): META_SAE_FRACTION,
    ("meta_sae", "median_reconstruction_cosine"): META_SAE_FRACTION,
    ("meta_sae", "dead_meta_latents"): (fixed(0), Tolerance(abs=1), THREADED_TRAINING),
    ("meta_sae", "base_latents_without_meta_latent"): (
        fixed(0),
        Tolerance(abs=2),
        THREADED_TRAINING,
    ),
    ("absorption", "alive_latents"): (fixed(0), rounded(0), DETERMINISTIC),
    ("absorption", "n_rows"): (lambda v: f"{v:.0f}", rounded(0), DETERMINISTIC),
    ("absorption", "rare_latents"): (fixed(0), rounded(0), DETERMINISTIC),
    ("absorption", "mean_overlap"): (fixed(2), rounded(2), DETERMINISTIC),
    ("absorption", "low_overlap_fraction"): PERCENT_ONE_DECIMAL,
    ("absorption", "mean_absorption_score"): (fixed(3), rounded(3), DETERMINISTIC),
    ("absorption", "suspected_latents"): (fixed(0), rounded(0), DETERMINISTIC),
    ("llc", "llc"): (fixed(3), Tolerance(abs=0.07), LLC_NOISE),
    ("llc", "llc_se"): (
        fixed(3),
        Tolerance(rel=0.5),
        "an SE over 4 chains is itself noisy",
    ),
    ("tokenized", "token_share_of_activations"): PERCENT_ONE_DECIMAL,
    ("tokenized", "token_share_of_activations_in_sample"): PERCENT_ONE_DECIMAL,
    ("tokenized", "sae_explained_variance"): PERCENT_ONE_DECIMAL,
    ("tokenized", "token_share_of_reconstruction"): PERCENT_ONE_DECIMAL,
    ("tokenized", "token_like_latent_fraction"): PERCENT_ONE_DECIMAL,
    ("tokenized", "median_latent_token_share"): (fixed(2), rounded(2), DETERMINISTIC),
}


def _demo_run_numbers() -> dict[str, Number]:
    numbers = {}
    for (analysis, metric), (fmt, tolerance, noise, *scale) in DEMO_RUN_METRICS.items():
        numbers[f"demo.{analysis}.{metric}"] = Number(
            "demo_run",
            lambda r, a=analysis, m=metric, k=(scale or [1])[0]: k * r["metrics"][a][m],
            fmt,
            tolerance,
            noise,
        )
    return numbers


WIDTH_COLUMNS = {  # short key: (bench/absorption_widths.py column, decimals)
    "letters": ("letters", 0),
    "probe_f1": ("probe F1", 3),
    "rate": ("first-letter rate", 3),
    "fraction": ("first-letter fraction", 3),
    "score": ("enc-vs-dec score", 3),
    "suspected": ("suspected", 0),
    "alive": ("alive", 0),
}


def _absorption_width_numbers() -> dict[str, Number]:
    """The absorption page's comparison across the demo widths, both hooks."""
    numbers = {}
    for layer in ("resid0", "resid1"):
        for width in (512, 1024, 2048):
            sae = f"{layer}-topk-{width}"
            for short, (column, digits) in WIDTH_COLUMNS.items():
                numbers[f"absorption.widths.{sae}.{short}"] = Number(
                    f"absorption_widths_{layer}",
                    lambda r, sae=sae, column=column: r["rows"][sae][column],
                    fixed(digits),
                    rounded(digits),
                    DETERMINISTIC,
                )
    return numbers


AS_BUILT = "read from release.json: exact for the shipped files, rounding only"
RELEASE_SAE_COLUMNS = {  # short key: (release.json field, decimals; None: a percentage)
    "l0": ("l0", 1),
    "ev": ("explained_variance", 3),
    "mse": ("mse", 3),
    "dead": ("dead_fraction", None),
    "ce_spliced": ("ce_loss_spliced", 3),
    "ce_zero": ("ce_loss_zero_ablated", 2),
    "ce_recovered": ("ce_loss_recovered", None),
}
RELEASE_SAES = (
    "resid0-topk-512",
    "resid0-topk-1024",
    "resid0-topk-2048",
    "resid0-relu-1024",
    "resid1-topk-512",
    "resid1-topk-1024",
    "resid1-topk-2048",
)
RELEASE_SPELLING = {  # short key: release.json "spelling" field, a fraction
    "seen": "spelling_accuracy_seen",
    "unseen": "spelling_accuracy_unseen",
    "majority": "spelling_unseen_majority_baseline",
}


def minutes_and_seconds(seconds: float) -> str:
    """``1156.9`` -> ``19 min 17 s``."""
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


def _as_built(value: Callable[[dict], Any], digits: int, unit: str = "") -> Number:
    """A number of the shipped build, printed with ``digits`` decimals."""
    return Number("demo_release", value, fixed(digits, unit), rounded(digits), AS_BUILT)


def _as_built_percent(value: Callable[[dict], float]) -> Number:
    """A fraction of the shipped build, printed as a percentage with one decimal."""
    return _as_built(lambda r: 100 * value(r), 1, "%")


def _demo_release_numbers() -> dict[str, Number]:
    """The demo release page's numbers, from the shipped build's own record."""
    numbers = {
        "demo.release.size_mb": _as_built(lambda r: r["size_bytes"] / 1e6, 1),
        "demo.release.size_bytes": _as_built(lambda r: r["size_bytes"], 0),
        "demo.release.text_loss": _as_built(
            lambda r: r["model"]["text_train_loss_last50"], 2
        ),
        "demo.release.eval_loss": _as_built(lambda r: r["model"]["eval_loss"], 2),
        "demo.release.max_dead": _as_built_percent(
            lambda r: max(sae["dead_fraction"] for sae in r["saes"].values())
        ),
    }
    for short, field in RELEASE_SPELLING.items():
        numbers[f"demo.release.spelling.{short}"] = _as_built_percent(
            lambda r, field=field: r["spelling"][field]
        )
    for where in ("embed", "resid0", "resid1"):
        for words, suffix in (("all", ""), ("seen", "_seen_words")):
            numbers[f"demo.release.probe.{where}.{words}"] = _as_built(
                lambda r, key=f"probe_f1_{where}{suffix}": r["spelling"][key], 2
            )
    for stage in ("tokenizer", "model", "spelling", "saes", "total"):
        numbers[f"demo.release.build.{stage}"] = _as_built(
            lambda r, stage=stage: r["build_seconds"][stage], 1
        )
    numbers["demo.release.build.total_min"] = _context(  # the total, checked above
        "demo_release",
        lambda r: r["build_seconds"]["total"],
        minutes_and_seconds,
    )
    for sae in RELEASE_SAES:
        for short, (field, digits) in RELEASE_SAE_COLUMNS.items():

            def read(r, sae=sae, field=field):
                return r["saes"][sae][field]

            numbers[f"demo.release.sae.{sae}.{short}"] = (
                _as_built_percent(read) if digits is None else _as_built(read, digits)
            )
    return numbers


NUMBERS: dict[str, Number] = {
    **_demo_run_numbers(),
    **_mdl_numbers("mdl_100k", "100k", full=False),
    **_mdl_numbers("mdl_1m", "1m", full=True),
    **_meta_demo_numbers(),
    **_stage_numbers(),
    **_mdl_compare_numbers(),
    **_demo_release_numbers(),
    **_absorption_width_numbers(),
}
