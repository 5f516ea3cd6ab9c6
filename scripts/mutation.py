"""Mutation testing of the numerical core with cosmic-ray: one command, a kill rate per module.

    python scripts/mutation.py mutation/mdl_entropy.toml [more configs ...]
    python scripts/mutation.py --sample 120 mutation/llc_estimator.toml
    python scripts/mutation.py --lines 125,259 -k printed mutation/llc_estimator.toml

For each config (one module and the tests that target it) this creates a
cosmic-ray session database next to it under ``mutation/sessions/`` with
``cosmic-ray init`` (cosmic-ray's operators choose the mutants), runs every
pending mutant, then prints the kill rate and the surviving mutants.

Mutants run in forked children of one process that has already imported the
heavy third-party libraries (torch, SAE-Lens, TransformerLens, pytest), so a
mutant costs its tests' run time rather than a fresh interpreter start (about
6 s here).  The child imports the project's modules afresh, with an import
hook that serves the mutated source of the target module: nothing on disk is
edited, so the checkout stays usable while a session runs.  A test that starts
a subprocess sees the unmutated file; such a mutant can only survive wrongly,
never be killed wrongly.  ``--cosmic-ray-exec`` runs the session with
cosmic-ray's own executor instead (in-place edits, one interpreter per mutant).

A config's optional ``[equivalent]`` table maps ``"operator #occurrence"``
of a surviving mutant to the reason no test can tell it from the original;
those, and mutants inside type annotations (never evaluated here), are
reported as equivalent and left out of the kill rate (annotations are not
run at all).  A config's optional ``[scope] functions`` list restricts the mutants to those
functions (``name`` or ``Class.method``) of the module.  ``--sample N`` tests
a seeded random sample of N of the remaining mutants and marks the rest
skipped (reported as such; both apply when the session is created).  A
session interrupted half way resumes when run again, and several runs of
one config share its mutants (each skips those another has done).  ``--lines``
judges every mutant on the given lines of the module outside any session (for
the survivors of a session whose database is gone).  It is a periodic
check, not part of CI.
"""

from __future__ import annotations

import argparse
import ast
import gc
import importlib.abc
import importlib.util
import json
import math
import os
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import toml  # cosmic-ray's own TOML reader
from cosmic_ray.mutating import mutate_code
from cosmic_ray.plugins import get_operator
from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkResult
from mutation_coverage import ALL_TESTS, Selection, coverage_map, covering_tests

PRELOADED = (
    "torch",
    "numpy",
    "pandas",
    "matplotlib.pyplot",
    "huggingface_hub",
    "safetensors",
    "sae_lens",
    "transformer_lens",
    "pytest",
)
PROJECT_PREFIXES = ("sae_lens_ext", "tests")
OUT_OF_SCOPE = "out of scope: outside the config's [scope] functions"
NOT_SAMPLED = "not sampled"
IN_ANNOTATION = "inside a type annotation, which is never evaluated"
NOT_COVERED = "not covered: no test executes line {line}"


def module_name(module_path: Path) -> str:
    """The import name of a module file of this repository (plugins live under ``plugins/``)."""
    parts = list(module_path.with_suffix("").parts)
    if parts[0] == "plugins":
        parts = parts[1:]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


class MutantFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves ``source`` as the module ``name`` (the file stays untouched on disk)."""

    def __init__(self, name: str, path: Path, source: str):
        self.name, self.path, self.source = name, path, source

    def find_spec(self, fullname, path=None, target=None):
        """A spec for the mutated module; None for every other name."""
        if fullname != self.name:
            return None
        return importlib.util.spec_from_file_location(fullname, self.path, loader=self)

    def create_module(self, spec):
        """Default module creation."""
        return None

    def exec_module(self, module):
        """Run the mutated source in the module's namespace."""
        exec(compile(self.source, str(self.path), "exec"), module.__dict__)


def pytest_args(test_command: str) -> list[str]:
    """The pytest arguments of a config's ``python ... -m pytest ARGS`` test command."""
    words = shlex.split(test_command)
    return words[words.index("pytest") + 1 :]


def run_mutant(
    name, path, source, args, timeout, selection=ALL_TESTS
) -> tuple[TestOutcome, str]:
    """Run pytest ``args`` in a forked child that imports ``source`` as module ``name``.

    ``selection`` (node ids, in the order to run them) keeps only those tests.
    """
    with tempfile.TemporaryFile() as log:
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 3
            try:
                os.setpgid(0, 0)
                os.dup2(log.fileno(), 1)
                os.dup2(log.fileno(), 2)
                sys.dont_write_bytecode = True
                # The project's tests use no third-party pytest plugin; loading them costs seconds.
                os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
                sys.meta_path.insert(0, MutantFinder(name, path, source))
                plugins = [] if selection is ALL_TESTS else [Selection(selection)]
                code = int(pytest.main(args, plugins=plugins))
            except BaseException as error:  # noqa: BLE001 - report anything as a failure
                print(f"mutant child failed: {error!r}", flush=True)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        deadline = time.monotonic() + timeout
        status = None
        while status is None:
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                status = raw
            elif time.monotonic() > deadline:
                os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return TestOutcome.KILLED, "timeout"
            else:
                time.sleep(0.05)
        log.seek(0)
        output = log.read().decode("utf-8", "replace")[-4000:]
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return TestOutcome.SURVIVED, output
    if code in (4, 5):  # pytest: usage error, no tests collected
        return TestOutcome.INCOMPETENT, output
    return TestOutcome.KILLED, output


def preload() -> None:
    """Import the heavy third-party libraries once, and none of the project's modules."""
    for library in PRELOADED:
        __import__(library)
    loaded = [m for m in sys.modules if m.split(".")[0].startswith(PROJECT_PREFIXES)]
    if loaded:
        raise RuntimeError(f"project modules imported before forking: {loaded}")
    # Keep the preloaded objects out of every later collection: at the end of a
    # session pytest calls gc.collect() five times (unraisableexception), about
    # 8 s over this heap per mutant on a quiet machine, 1 s once it is frozen.
    gc.freeze()


def diff_of(original: str, mutated: str, path: Path) -> str:
    """A unified diff of a mutant against the original source."""
    import difflib

    return "".join(
        difflib.unified_diff(
            original.splitlines(True), mutated.splitlines(True), str(path), str(path)
        )
    )


def has_result(db, job_id: str) -> bool:
    """Whether the session already holds a result for ``job_id``."""
    from cosmic_ray.work_db import WorkResultStorage

    with db._session_maker.begin() as session:
        return session.query(WorkResultStorage).filter_by(job_id=job_id).count() > 0


def selection_of(config: Path, settings: dict, all_tests: bool):
    """A function from a mutant's spec to its tests (ALL_TESTS: every test of the config)."""
    if all_tests:
        return lambda spec: ALL_TESTS
    (module,) = settings["module-path"]
    path = Path(module)
    cache = config.parent / "sessions" / f"{config.stem}.coverage.json"
    recorded = coverage_map(
        path, pytest_args(settings["test-command"]), cache, float(settings["timeout"])
    )
    tree = ast.parse(path.read_text())
    return lambda spec: covering_tests(tree, tuple(spec.start_pos), recorded)


def mutant_source(spec) -> tuple[str, str | None]:
    """The original source of a mutant's module and the mutated one (None: no mutant)."""
    original = spec.module_path.read_text()
    operator = get_operator(spec.operator_name)(**(spec.operator_args or {}))
    return original, mutate_code(original, operator, spec.occurrence)


def judge_mutant(spec, mutated, tests, args, timeout) -> tuple[TestOutcome, str]:
    """The verdict on one mutant from ``tests`` (an empty selection survives untested)."""
    if tests == []:
        return TestOutcome.SURVIVED, NOT_COVERED.format(line=spec.start_pos[0])
    name, path = module_name(spec.module_path), spec.module_path.resolve()
    return run_mutant(name, path, mutated, args, timeout, tests)


def exec_forked(config: Path, database: Path, all_tests: bool) -> None:
    """Run every pending mutant of a session in forked children, each on its own tests."""
    settings = toml.load(config)["cosmic-ray"]
    args = pytest_args(settings["test-command"])
    timeout = float(settings["timeout"])
    preload()
    select = selection_of(config, settings, all_tests)
    with use_db(str(database), WorkDB.Mode.open) as db:
        pending = list(db.pending_work_items)
        spans: dict[Path, list] = {}
        for index, item in enumerate(pending, 1):
            if has_result(db, item.job_id):  # another worker on this session did it
                continue
            (spec,) = item.mutations
            path = spec.module_path
            if spans.get(path) is None:
                spans[path] = annotation_spans(path)
            if any(a <= tuple(spec.start_pos) < b for a, b in spans[path]):
                skip(db, [item.job_id], IN_ANNOTATION)
                continue
            original, mutated = mutant_source(spec)
            if mutated is None:
                db.set_result(
                    item.job_id, WorkResult(worker_outcome=WorkerOutcome.NO_TEST)
                )
                continue
            tests = select(spec)
            started = time.monotonic()
            outcome, output = judge_mutant(spec, mutated, tests, args, timeout)
            db.set_result(
                item.job_id,
                WorkResult(
                    worker_outcome=WorkerOutcome.NORMAL,
                    test_outcome=outcome,
                    output=output,
                    diff=diff_of(original, mutated, path),
                ),
            )
            chosen = "all" if tests is ALL_TESTS else len(tests)
            print(
                f"[{index}/{len(pending)}] {path}:{spec.start_pos[0]} {spec.operator_name} "
                f"#{spec.occurrence}: {outcome.value} ({chosen} tests, "
                f"{time.monotonic() - started:.1f} s)",
                flush=True,
            )


def scope_lines(path: Path, functions: list[str]) -> set[int]:
    """The source lines of the named functions (``name`` or ``Class.method``) of a module."""
    lines: set[int] = set()
    found: set[str] = set()

    def visit(node, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + child.name
                if name in functions:
                    found.add(name)
                    lines.update(range(child.lineno, child.end_lineno + 1))
                visit(child, name + ".")

    visit(ast.parse(path.read_text()), "")
    if missing := set(functions) - found:
        raise ValueError(
            f"{path} has no function(s) {sorted(missing)}: fix the config's [scope]"
        )
    return lines


def identity(item) -> tuple:
    """A work item's mutant as (module, position, operator, occurrence).

    cosmic-ray names work items by random UUIDs, so a sample drawn in UUID
    order would differ between two ``cosmic-ray init`` of the same module; in
    this order a seed draws the same mutants every time.
    """
    (spec,) = item.mutations
    return (
        str(spec.module_path),
        tuple(spec.start_pos),
        spec.operator_name,
        spec.occurrence,
    )


def skip(db, jobs: list[str], reason: str) -> None:
    """Record ``jobs`` as skipped (never run), saying why."""
    if jobs:
        result = WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output=reason)
        db.set_multiple_results(jobs, result)


def narrow_session(
    database: Path, functions: list[str], size: int | None, seed: int
) -> None:
    """Skip mutants outside ``functions`` (if given), then all but a seeded sample of ``size``."""
    with use_db(str(database), WorkDB.Mode.open) as db:
        items = sorted(db.pending_work_items, key=identity)
        if functions:
            (path,) = {item.mutations[0].module_path for item in items}
            lines = scope_lines(path, functions)
            inside = [i for i in items if i.mutations[0].start_pos[0] in lines]
            outside = [
                i.job_id for i in items if i.mutations[0].start_pos[0] not in lines
            ]
            skip(db, outside, OUT_OF_SCOPE)
            items = inside
        if size is not None and len(items) > size:
            keep = set(random.Random(seed).sample([i.job_id for i in items], size))
            skip(db, [i.job_id for i in items if i.job_id not in keep], NOT_SAMPLED)


def forget_survivors(config: Path, database: Path) -> int:
    """Make the non-equivalent survivors of a session pending again (for new tests)."""
    from cosmic_ray.work_db import WorkResultStorage

    with use_db(str(database), WorkDB.Mode.open) as db:
        survivors = [
            item.job_id
            for item, result in db.completed_work_items
            if result.test_outcome == TestOutcome.SURVIVED
            and not equivalence(
                config,
                item.mutations[0],
                annotation_spans(item.mutations[0].module_path),
            )
        ]
        with db._session_maker.begin() as session:
            session.query(WorkResultStorage).filter(
                WorkResultStorage.job_id.in_(survivors)
            ).delete()
    return len(survivors)


def grow_sample(database: Path, size: int, seed: int) -> int:
    """Make pending a seeded draw of not-sampled mutants until ``size`` are in the sample."""
    from cosmic_ray.work_db import WorkResultStorage

    with use_db(str(database), WorkDB.Mode.open) as db:
        results = {item.job_id: result for item, result in db.completed_work_items}
        ids = [item.job_id for item in sorted(db.work_items, key=identity)]
    unsampled = [i for i in ids if i in results and results[i].output == NOT_SAMPLED]
    scope = [i for i in ids if i not in results or results[i].output != OUT_OF_SCOPE]
    missing = min(size - (len(scope) - len(unsampled)), len(unsampled))
    if missing <= 0:
        return 0
    added = random.Random(seed).sample(unsampled, missing)
    with use_db(str(database), WorkDB.Mode.open) as db:
        with db._session_maker.begin() as session:
            session.query(WorkResultStorage).filter(
                WorkResultStorage.job_id.in_(added)
            ).delete()
    return missing


def open_session(config: Path, sample: int | None, seed: int) -> Path:
    """The session database of ``config``: created (scoped, sampled) once, or its sample grown."""
    sessions = config.parent / "sessions"
    sessions.mkdir(exist_ok=True)
    database = sessions / f"{config.stem}.sqlite"
    if not database.exists():
        subprocess.run(["cosmic-ray", "init", str(config), str(database)], check=True)
        functions = toml.load(config).get("scope", {}).get("functions", [])
        narrow_session(database, functions, sample, seed)
    elif sample is not None and (added := grow_sample(database, sample, seed + 1)):
        print(f"{config.stem}: {added} more mutants drawn into the sample")
    return database


def run_session(config: Path, sample: int | None, seed: int, executor: str) -> Path:
    """Open the session of ``config`` and execute its pending mutants."""
    database = open_session(config, sample, seed)
    if executor == "cosmic-ray":
        subprocess.run(["cosmic-ray", "exec", str(config), str(database)], check=True)
    else:
        exec_forked(config, database, all_tests=executor == "all-tests")
    return database


def wilson(killed: int, tested: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95% by default) of a kill rate ``killed / tested``."""
    if tested == 0:
        return 0.0, 1.0
    rate = killed / tested
    centre = (rate + z * z / (2 * tested)) / (1 + z * z / tested)
    half = (
        z
        / (1 + z * z / tested)
        * math.sqrt(rate * (1 - rate) / tested + z * z / (4 * tested * tested))
    )
    return max(0.0, centre - half), min(1.0, centre + half)


def annotation_spans(path: Path) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Source spans of the type annotations of a module that never evaluates them.

    With ``from __future__ import annotations`` an annotation is a string no
    code reads here, so a mutant inside one is equivalent.
    """
    tree = ast.parse(path.read_text())
    lazy = any(
        isinstance(node, ast.ImportFrom)
        and node.module == "__future__"
        and any(alias.name == "annotations" for alias in node.names)
        for node in tree.body
    )
    if not lazy:
        return []
    annotations = []
    for node in ast.walk(tree):
        if isinstance(node, ast.arg) and node.annotation is not None:
            annotations.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns:
            annotations.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            annotations.append(node.annotation)
    return [
        ((a.lineno, a.col_offset), (a.end_lineno, a.end_col_offset))
        for a in annotations
    ]


def equivalence(config: Path, spec, spans) -> str | None:
    """Why the mutant ``spec`` is equivalent (config's ``[equivalent]`` or an annotation)."""
    listed = toml.load(config).get("equivalent", {})
    key = f"{spec.operator_name} #{spec.occurrence}"
    if key in listed:
        return listed[key]
    position = tuple(spec.start_pos)
    if any(start <= position < end for start, end in spans):
        return IN_ANNOTATION
    return None


def verify_selection(config: Path, database: Path, size: int, seed: int) -> int:
    """Judge mutants on their selected tests and on all tests; count the verdicts that differ.

    The mutants are the session's survivors (those not covered included) and a
    seeded random draw of the other in-scope mutants, ``size`` in all.
    """
    settings = toml.load(config)["cosmic-ray"]
    args = pytest_args(settings["test-command"])
    timeout = float(settings["timeout"])
    preload()
    select = selection_of(config, settings, all_tests=False)
    with use_db(str(database), WorkDB.Mode.open) as db:
        results = {item.job_id: result for item, result in db.completed_work_items}
        items = sorted(db.work_items, key=identity)
    spans = annotation_spans(items[0].mutations[0].module_path)
    survivors, others = [], []
    for item in items:
        result = results.get(item.job_id)
        spec = item.mutations[0]
        if (result is not None and result.output == OUT_OF_SCOPE) or any(
            a <= tuple(spec.start_pos) < b for a, b in spans
        ):
            continue
        survived = result is not None and result.test_outcome == TestOutcome.SURVIVED
        (survivors if survived else others).append(item)
    random.Random(seed).shuffle(others)
    chosen = (survivors + others)[:size]
    rows, differ = [], 0
    for item in chosen:
        (spec,) = item.mutations
        _, mutated = mutant_source(spec)
        if mutated is None:
            continue
        row = dict(
            mutant=f"{spec.start_pos[0]} {spec.operator_name} #{spec.occurrence}"
        )
        for label, tests in (("selected", select(spec)), ("all", ALL_TESTS)):
            started = time.monotonic()
            outcome, _ = judge_mutant(spec, mutated, tests, args, timeout)
            row[label] = outcome.value
            row[f"{label}_s"] = round(time.monotonic() - started, 1)
            row[f"{label}_tests"] = "all" if tests is ALL_TESTS else len(tests)
        differ += row["selected"] != row["all"]
        rows.append(row)
        print(
            f"{config.stem} line {row['mutant']}: selected {row['selected_tests']} tests "
            f"{row['selected']} in {row['selected_s']} s, all tests {row['all']} in "
            f"{row['all_s']} s",
            flush=True,
        )
    seconds = [sum(row[f"{label}_s"] for row in rows) for label in ("selected", "all")]
    out = database.with_suffix(".verify.json")
    out.write_text(json.dumps(dict(rows=rows, seconds=seconds), indent=1))
    print(
        f"{config.stem}: {len(rows) - differ}/{len(rows)} verdicts agree; selected tests "
        f"{seconds[0]:.0f} s, all tests {seconds[1]:.0f} s "
        f"({seconds[1] / max(seconds[0], 1e-9):.1f}x) -> {out}"
    )
    return differ


def report(config: Path, database: Path) -> dict[str, int]:
    """Print survivors and equivalent mutants; return the counts of each outcome."""
    counts = dict(
        killed=0,
        survived=0,
        equivalent=0,
        incompetent=0,
        out_of_scope=0,
        skipped=0,
        pending=0,
    )
    with use_db(str(database), WorkDB.Mode.open) as db:
        counts["pending"] = sum(1 for _ in db.pending_work_items)
        spans = None
        for item, result in sorted(
            db.completed_work_items, key=lambda pair: pair[0].mutations[0].start_pos
        ):
            (spec,) = item.mutations
            where = f"{spec.module_path}:{spec.start_pos[0]} {spec.operator_name} #{spec.occurrence}"
            if (
                result.worker_outcome == WorkerOutcome.SKIPPED
                and result.output == OUT_OF_SCOPE
            ):
                counts["out_of_scope"] += 1
            elif result.output == IN_ANNOTATION:
                counts["equivalent"] += 1
                print(f"  equivalent: {where}: {IN_ANNOTATION}")
            elif result.worker_outcome in (
                WorkerOutcome.SKIPPED,
                WorkerOutcome.NO_TEST,
            ):
                counts["skipped"] += 1
            elif result.test_outcome == TestOutcome.KILLED:
                counts["killed"] += 1
            elif result.test_outcome == TestOutcome.INCOMPETENT:
                counts["incompetent"] += 1
            else:
                if spans is None:
                    spans = annotation_spans(spec.module_path)
                reason = equivalence(config, spec, spans)
                if reason:
                    counts["equivalent"] += 1
                    print(f"  equivalent: {where}: {reason}")
                else:
                    counts["survived"] += 1
                    covered = (
                        " (not covered)"
                        if (result.output or "").startswith("not covered")
                        else ""
                    )
                    print(f"  survived: {where}{covered}")
    return counts


def judge_lines(config: Path, lines: set[int], keyword: str | None) -> int:
    """Judge every mutant on ``lines`` of a config's module, outside any session.

    The mutants come from a fresh ``cosmic-ray init`` in a scratch directory;
    each runs the config's tests (only those ``-k keyword`` selects, if given:
    a kill by some of the config's tests is a kill by all of them).  Prints
    one verdict per mutant and the diff of each survivor; returns the number
    of non-equivalent survivors.
    """
    settings = toml.load(config)["cosmic-ray"]
    args = pytest_args(settings["test-command"])
    if keyword:
        args += ["-k", keyword]
    timeout = float(settings["timeout"])
    with tempfile.TemporaryDirectory() as scratch:
        database = Path(scratch) / "lines.sqlite"
        subprocess.run(
            ["cosmic-ray", "init", str(config), str(database)],
            check=True,
            capture_output=True,
        )
        with use_db(str(database), WorkDB.Mode.open) as db:
            items = sorted(db.work_items, key=identity)
    preload()
    survived = 0
    for item in items:
        (spec,) = item.mutations
        if spec.start_pos[0] not in lines:
            continue
        original, mutated = mutant_source(spec)
        if mutated is None:
            continue
        outcome, _ = judge_mutant(spec, mutated, ALL_TESTS, args, timeout)
        spans = annotation_spans(spec.module_path)
        reason = equivalence(config, spec, spans)
        verdict = outcome.value
        if outcome == TestOutcome.SURVIVED and reason:
            verdict = f"equivalent ({reason})"
        elif outcome == TestOutcome.SURVIVED:
            survived += 1
        print(
            f"{spec.module_path}:{spec.start_pos[0]} {spec.operator_name} "
            f"#{spec.occurrence}: {verdict}",
            flush=True,
        )
        if outcome == TestOutcome.SURVIVED and not reason:
            print(diff_of(original, mutated, spec.module_path), flush=True)
    return survived


def main(argv: list[str]) -> int:
    """Run each config's session and print its kill rate; 1 if any mutant survived."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("configs", nargs="+", type=Path, help="mutation/*.toml configs")
    parser.add_argument(
        "--sample", type=int, help="test a random sample of this many mutants"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the sample (default 0)"
    )
    parser.add_argument(
        "--rerun-survivors",
        action="store_true",
        help="test the survivors of an existing session again (after adding tests)",
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="only print each existing session's kill rate (run nothing)",
    )
    parser.add_argument(
        "--all-tests",
        action="store_true",
        help="run every test of the config on each mutant (no selection by coverage)",
    )
    parser.add_argument(
        "--cosmic-ray-exec", action="store_true", help="use cosmic-ray's own executor"
    )
    parser.add_argument(
        "--verify-selection",
        type=int,
        metavar="N",
        help="judge N mutants (survivors first) on selected and on all tests; compare",
    )
    parser.add_argument(
        "--lines",
        help="judge every mutant on these comma-separated lines of the module "
        "(no session; for survivors of a session that is gone)",
    )
    parser.add_argument(
        "-k",
        dest="keyword",
        help="with --lines: only the config's tests this pytest -k expression selects",
    )
    options = parser.parse_args(argv)
    if options.lines:
        lines = {int(line) for line in options.lines.split(",")}
        survived = sum(
            judge_lines(config, lines, options.keyword) for config in options.configs
        )
        return 1 if survived else 0
    executor = (
        "cosmic-ray"
        if options.cosmic_ray_exec
        else "all-tests"
        if options.all_tests
        else "selected"
    )
    if options.verify_selection:
        differ = 0
        for config in options.configs:
            database = open_session(config, options.sample, options.seed)
            differ += verify_selection(
                config, database, options.verify_selection, options.seed
            )
        return 1 if differ else 0
    any_survived = False
    for config in options.configs:
        database = config.parent / "sessions" / f"{config.stem}.sqlite"
        if options.rerun_survivors and database.exists():
            print(
                f"{config.stem}: {forget_survivors(config, database)} survivors to test again"
            )
        if not options.report:
            database = run_session(config, options.sample, options.seed, executor)
        elif not database.exists():
            print(f"{config.stem}: no session yet")
            continue
        counts = report(config, database)
        tested = counts["killed"] + counts["survived"]
        rate = counts["killed"] / tested if tested else float("nan")
        low, high = wilson(counts["killed"], tested)
        print(
            f"{config.stem}: {counts['killed']}/{tested} non-equivalent mutants killed "
            f"({rate:.1%}, 95% Wilson interval {low:.1%}-{high:.1%}); "
            f"{counts['equivalent']} equivalent, "
            f"{counts['incompetent']} incompetent (the mutant does not import), "
            f"{counts['out_of_scope']} out of scope, {counts['skipped']} not sampled, "
            f"{counts['pending']} pending"
        )
        any_survived |= counts["survived"] > 0
    return 1 if any_survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
