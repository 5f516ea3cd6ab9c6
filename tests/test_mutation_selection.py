"""scripts/mutation_coverage.py: which tests a mutant runs, from a line-to-tests map."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from mutation_coverage import covering_tests  # noqa: E402

TARGET = textwrap.dedent(
    """\
    import functools

    SCALE = 2.0


    @functools.lru_cache(maxsize=4)
    def scaled(x, factor=SCALE):
        if (x > 0 and
                factor > 1):
            return x * factor
        return -x


    class Box:
        size = 3

        def area(self, side=1):
            def inner(y):
                return y + 1
            return inner(side * self.size)
    """
)

# What a recording would hold: the tests that ran each line, and each test's seconds.
RECORDED = {
    "seconds": {"t_slow": 5.0, "t_fast": 0.1, "t_box": 1.0, "t_other": 0.5},
    "lines": {
        "8": ["t_slow", "t_fast"],
        "10": ["t_slow"],
        "11": ["t_fast"],
        "19": ["t_box"],
        "20": ["t_box"],
    },
}


def select(line: int, column: int) -> list[str]:
    """The tests chosen for a mutant at ``line``:``column`` of TARGET."""
    return covering_tests(ast.parse(TARGET), (line, column), RECORDED)


def test_a_statement_in_a_function_runs_the_tests_that_execute_it_fastest_first():
    assert TARGET.splitlines()[9].strip() == "return x * factor"
    assert select(10, 19) == ["t_slow"]
    assert select(11, 8) == ["t_fast"]


def test_a_multi_line_condition_counts_every_line_of_its_header_not_its_body():
    # line 9 ("factor > 1") records no line event of its own; the `if` starts on line 8
    assert select(9, 12) == ["t_fast", "t_slow"]


def test_a_def_line_runs_every_test():
    # a default, a decorator or the signature can fail a call before the body runs
    everything = ["t_fast", "t_other", "t_box", "t_slow"]
    assert select(7, 22) == everything  # factor=SCALE
    assert select(6, 29) == everything  # maxsize=4 in the decorator
    assert select(17, 24) == everything  # the method's default side=1


def test_import_time_code_runs_every_test_fastest_first():
    everything = ["t_fast", "t_other", "t_box", "t_slow"]
    assert select(3, 8) == everything  # SCALE = 2.0
    assert select(15, 11) == everything  # a class attribute


def test_nested_functions_and_uncovered_lines():
    assert select(19, 23) == ["t_box"]  # inside the closure
    uncovered = dict(RECORDED, lines={})
    assert covering_tests(ast.parse(TARGET), (10, 19), uncovered) == []


def test_recording_credits_a_shared_fixture_to_every_test_that_uses_it(tmp_path):
    pytest.importorskip("coverage")
    (tmp_path / "target_mod.py").write_text(
        "def compute(x):\n    return x * 2\n\n\ndef unused(x):\n    return x - 1\n"
    )
    (tmp_path / "test_target.py").write_text(
        textwrap.dedent(
            """\
            import pytest
            import target_mod

            @pytest.fixture(scope="module")
            def value():
                return target_mod.compute(3)

            def test_first(value):
                assert value == 6

            def test_second(value):
                assert value > 0

            def test_without():
                assert True
            """
        )
    )
    script = textwrap.dedent(
        f"""\
        import json, sys
        from pathlib import Path
        sys.path[:0] = [{str(ROOT / "scripts")!r}, {str(tmp_path)!r}]
        from mutation_coverage import record
        result = record(Path("target_mod.py"), ["-q", "-p", "no:cacheprovider",
                        "test_target.py"], timeout=120)
        print(json.dumps(result))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["lines"]["2"] == [
        "test_target.py::test_first",
        "test_target.py::test_second",
    ]
    assert "6" not in result["lines"]  # unused() never ran
    assert set(result["seconds"]) == {
        "test_target.py::test_first",
        "test_target.py::test_second",
        "test_target.py::test_without",
    }


def test_wilson_interval_matches_its_closed_form_values():
    pytest.importorskip("cosmic_ray")
    from mutation import wilson

    # 0 of 10: upper bound z^2 / (n + z^2) = 3.8416 / 13.8416
    assert wilson(0, 10) == pytest.approx((0.0, 3.8416 / 13.8416), abs=1e-9)
    # n of n: lower bound n / (n + z^2)
    assert wilson(40, 40)[0] == pytest.approx(40 / 43.8416, abs=1e-9)
    low, high = wilson(34, 40)  # p = 0.85: symmetric about the shrunk centre
    centre = (0.85 + 3.8416 / 80) / (1 + 3.8416 / 40)
    assert (low + high) / 2 == pytest.approx(centre, abs=1e-12)
    assert json.dumps(wilson(0, 0)) == "[0.0, 1.0]"


def test_a_seeded_sample_is_the_same_after_a_fresh_init(tmp_path):
    # cosmic-ray names work items by random UUIDs; the sample is drawn in
    # mutant order, so two inits of the same source sample the same mutants.
    pytest.importorskip("cosmic_ray")
    from cosmic_ray.work_db import WorkDB, use_db

    from mutation import NOT_SAMPLED, identity, narrow_session

    (tmp_path / "target_mod.py").write_text(TARGET)
    config = tmp_path / "target.toml"
    config.write_text(
        textwrap.dedent(
            """\
            [cosmic-ray]
            module-path = ["target_mod.py"]
            timeout = 10.0
            excluded-modules = []
            test-command = "python -m pytest -q"
            [cosmic-ray.distributor]
            name = "local"
            """
        )
    )
    samples = []
    for name in ("first", "second"):
        database = tmp_path / f"{name}.sqlite"
        subprocess.run(
            ["cosmic-ray", "init", str(config), str(database)],
            cwd=tmp_path,
            check=True,
            capture_output=True,
        )
        narrow_session(database, [], size=5, seed=0)
        with use_db(str(database), WorkDB.Mode.open) as db:
            skipped = {
                item.job_id
                for item, result in db.completed_work_items
                if result.output == NOT_SAMPLED
            }
            samples.append(
                sorted(
                    identity(i)[1:] for i in db.work_items if i.job_id not in skipped
                )
            )
    assert len(samples[0]) == 5
    assert samples[0] == samples[1]
