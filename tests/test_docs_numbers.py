"""Documented numbers come from runs (``scripts/refresh_docs.py``).

The markers in the docs and the registry must name the same keys; the script
must flag a number that drifted beyond its stated noise and rewrite it with
``--write``; and the cheap worked examples are re-run here and must match
the docs.  The minutes-long benchmarks are re-run only by the script.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import refresh_docs  # noqa: E402
from docs_registry import NUMBERS, PRODUCERS, Number, Producer, Tolerance  # noqa: E402


def all_markers():
    return refresh_docs.find_markers(refresh_docs.docs_files(ROOT))


def test_every_marker_has_a_registry_key_and_every_key_a_marker():
    markers = all_markers()
    assert len(markers) > 50
    assert refresh_docs.structure_problems(markers) == []


def test_every_checked_marker_holds_a_number_and_names_a_known_producer():
    for marker in all_markers():
        number = NUMBERS[marker.key]
        assert number.producer in PRODUCERS, marker
        if number.tolerance is not None:
            refresh_docs.parse_number(marker.text)  # raises when there is none


def test_parse_number_reads_bold_signs_units_and_thousands():
    assert refresh_docs.parse_number("**1,226.2 s**") == 1226.2
    assert refresh_docs.parse_number("7.5x") == 7.5
    assert refresh_docs.parse_number("-0.202") == -0.202
    assert refresh_docs.parse_number("+82 MB") == 82
    with pytest.raises(ValueError, match="no number"):
        refresh_docs.parse_number("n/a")


def test_tolerances_flag_the_stale_mdl_claim_and_accept_noise():
    # issue 20: the docs said 9.7x, re-measured 6.6x twice (paired-ratio noise 35%)
    ratio = NUMBERS["mdl.100k.speedup"]
    assert refresh_docs.drift(ratio, "9.7x", 6.6) is not None
    assert refresh_docs.drift(ratio, "6.8x", 6.6) is None
    seconds = Tolerance(factor=3.0)
    assert seconds.accepts(30.0, 12.0) and not seconds.accepts(40.0, 12.0)
    assert not seconds.accepts(3.9, 12.0)
    four_decimals = NUMBERS["mdl.1m.bits"].tolerance
    assert four_decimals.accepts(713.1869, 713.18692)
    assert not four_decimals.accepts(713.1869, 713.1871)


def test_context_numbers_are_rewritten_but_never_checked():
    load = NUMBERS["mdl.1m.load"]
    assert load.tolerance is None
    assert refresh_docs.drift(load, "anything", (1.0, 9.0)) is None
    assert load.format((2.04, 6.81)) == "2.0-6.8"


def test_rewrite_changes_only_the_marked_text_outside_code_blocks(tmp_path):
    fenced = "```markdown\n**<!--n:x-->1.0x<!--/n--> faster**\n```\n"
    text = "a <!--n:x-->1.0x<!--/n--> b <!--n:y-->2<!--/n--> 1.0x\n" + fenced
    assert refresh_docs.rewrite(text, {"x": "3.5x"}) == (
        "a <!--n:x-->3.5x<!--/n--> b <!--n:y-->2<!--/n--> 1.0x\n" + fenced
    )
    page = tmp_path / "page.md"
    page.write_text(text)
    assert [m.key for m in refresh_docs.find_markers([page])] == ["x", "y"]


@pytest.fixture
def fake_project(tmp_path, monkeypatch):
    """A project with one docs page and a registry of one deterministic producer."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("no numbers\n")
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "| x | **<!--n:t.ratio-->9.7x<!--/n--> faster** |\n"
        "exact <!--n:t.count-->668<!--/n--> rows, load <!--n:t.load-->1-2<!--/n-->\n"
    )
    calls = []

    def producer():
        calls.append(1)
        return {"ratio": 6.6, "count": 668, "load": (3.0, 4.5)}

    producers = {"t": Producer("python t.py", producer, tier="cheap", demo=True)}
    numbers = {
        "t.ratio": Number(
            "t", lambda r: r["ratio"], lambda v: f"{v:.1f}x", Tolerance(rel=0.35)
        ),
        "t.count": Number(
            "t", lambda r: r["count"], lambda v: f"{v:,.0f}", Tolerance(abs=0.5)
        ),
        "t.load": Number(
            "t", lambda r: r["load"], lambda v: f"{v[0]:.1f}-{v[1]:.1f}", None
        ),
    }
    monkeypatch.setattr(refresh_docs, "ROOT", tmp_path)
    monkeypatch.setattr(refresh_docs, "PRODUCERS", producers)
    monkeypatch.setattr(refresh_docs, "NUMBERS", numbers)
    return page, calls


def test_check_fails_on_drift_and_write_updates_in_place(fake_project, tmp_path):
    page, calls = fake_project
    before = page.read_text()
    assert refresh_docs.main([]) == 1  # 9.7x documented, 6.6x measured
    assert page.read_text() == before  # a check never writes
    assert refresh_docs.main(["--write", "--results", str(tmp_path / "r")]) == 0
    assert page.read_text() == (
        "| x | **<!--n:t.ratio-->6.6x<!--/n--> faster** |\n"
        "exact <!--n:t.count-->668<!--/n--> rows, load <!--n:t.load-->3.0-4.5<!--/n-->\n"
    )
    assert refresh_docs.main(["--results", str(tmp_path / "r"), "--reuse"]) == 0
    assert len(calls) == 2  # the last check read the saved result


def test_unknown_marker_and_unmarked_key_fail(fake_project):
    page, _ = fake_project
    page.write_text(page.read_text().replace("t.count", "t.typo"))
    assert refresh_docs.main(["--tier", "cheap"]) == 1
    problems = refresh_docs.structure_problems(
        refresh_docs.find_markers(refresh_docs.docs_files(refresh_docs.ROOT))
    )
    assert any("'t.typo' is not in the registry" in p for p in problems)
    assert any("'t.count'" in p and "no marker" in p for p in problems)


def test_a_failing_producer_is_reported_not_hidden(fake_project, monkeypatch):
    def broken():
        raise RuntimeError("bench crashed")

    monkeypatch.setitem(
        refresh_docs.PRODUCERS, "t", Producer("python t.py", broken, "cheap", True)
    )
    assert refresh_docs.main(["--write"]) == 1


@pytest.mark.slow
def test_cheap_documented_numbers_match_a_run():
    """Re-run the cheap worked examples (the MDL comparison of the demo SAEs)."""
    assert refresh_docs.main(["--tier", "cheap"]) == 0
