"""bench/timing.py: the sides take turns, and medians, ranges and paired ratios are right."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from timing import Spread, alternate, paired_ratio, write_json  # noqa: E402


def test_sides_take_turns_and_warmup_rounds_are_dropped():
    order, clock = [], iter(range(1, 100))

    def side(name):
        def run_once():
            order.append(name)
            return float(next(clock))

        return run_once

    times = alternate({"ours": side("ours"), "peer": side("peer")}, rounds=3, warmup=1)
    assert order == ["ours", "peer"] * 4
    assert times["ours"].samples == (3.0, 5.0, 7.0)  # round 0 (1.0, 2.0) was warm-up
    assert times["peer"].samples == (4.0, 6.0, 8.0)


def test_spread_median_range_quartiles_and_text():
    spread = Spread((4.0, 1.0, 3.0, 2.0, 10.0))
    assert spread.median == 3.0
    assert (spread.low, spread.high) == (1.0, 10.0)
    assert spread.quartiles() == (2.0, 4.0)
    assert spread.text() == "3.00 s (1.00-10.00, 5 runs)"
    assert Spread((2.5,)).text(unit="x", digits=1) == "2.5x (1 run)"
    with pytest.raises(ValueError, match="at least one"):
        Spread(())


def test_paired_ratio_is_round_by_round_not_a_ratio_of_medians():
    peer = Spread((10.0, 30.0, 20.0))
    ours = Spread((5.0, 10.0, 20.0))
    ratio = paired_ratio(peer, ours)
    assert ratio.samples == (2.0, 3.0, 1.0)
    assert ratio.median == 2.0
    # rounds (1 vs 1) and (9 vs 3): median of ratios 2, ratio of medians 5 / 2
    assert paired_ratio(Spread((1.0, 9.0)), Spread((1.0, 3.0))).median == 2.0
    with pytest.raises(ValueError, match="same number of rounds"):
        paired_ratio(peer, Spread((1.0,)))


def test_write_json_turns_spreads_into_plain_dicts(tmp_path):
    path = tmp_path / "out.json"
    write_json(path, {"seconds": {"ours": Spread((1.0, 3.0))}, "tokens": 5})
    record = json.loads(path.read_text())
    assert record["tokens"] == 5
    assert record["seconds"]["ours"]["median"] == 2.0
    assert record["seconds"]["ours"]["samples"] == [1.0, 3.0]
    write_json(None, {"ignored": True})  # no path: nothing written, no error
