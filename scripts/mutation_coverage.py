"""Per-mutant test selection for scripts/mutation.py: which tests execute each line.

Once per module (and again whenever the module, the test command or its test
files change) the config's tests run unmutated under coverage.py with one
dynamic context per test, and a fixture's set-up lines are credited to every
test that requests that fixture (a module-scoped fixture runs inside the first
test that needs it, yet its result feeds them all).  The map, with each test's
run time, is kept next to the session as ``mutation/sessions/<config>.coverage.json``.

A mutant then runs only the tests that execute its statement, fastest first,
stopping at the first failure (``-x``):

- a statement inside a function body: the tests that execute any line of it
  (the header lines only, for ``if``/``for``/``while``/``with``);
- anything else: a ``def`` line (a default value, a decorator, the signature,
  which a call can trip over before the body runs), module constants, class
  bodies and imports: all of the config's tests (fastest first too).

A mutant whose statement no test executes is not run: it survives by
definition (reported as "not covered").  A test that starts a subprocess, or
a helper that caches a result across tests, can hide a line's use from the
map; ``scripts/mutation.py --verify-selection`` compares the verdicts with
running every test on a sample of mutants.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pytest

ALL_TESTS = None  # a selection of None means: every test of the config
FIXTURE_PREFIX = "fixture "
DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


class ContextRecorder:
    """A pytest plugin that switches coverage's context per test and per fixture set-up."""

    def __init__(self, coverage):
        self.coverage = coverage
        self.stack = [""]
        self.seconds: dict[str, float] = {}
        self.fixtures: dict[str, list[str]] = {}
        self.failed: list[str] = []

    def _enter(self, context: str) -> None:
        self.stack.append(context)
        self.coverage.switch_context(context)

    def _leave(self) -> None:
        self.stack.pop()
        self.coverage.switch_context(self.stack[-1])

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        """Credit the lines a test runs (set-up, call and tear-down) to its node id."""
        self.fixtures[item.nodeid] = list(item.fixturenames)
        started = time.perf_counter()
        self._enter(item.nodeid)
        try:
            yield
        finally:
            self._leave()
            self.seconds[item.nodeid] = time.perf_counter() - started

    @pytest.hookimpl(hookwrapper=True)
    def pytest_fixture_setup(self, fixturedef, request):
        """Credit a fixture's set-up to the fixture, hence to every test that requests it."""
        self._enter(FIXTURE_PREFIX + fixturedef.argname)
        try:
            yield
        finally:
            self._leave()

    def pytest_runtest_logreport(self, report):
        """Note a test that fails unmutated: the map would be wrong."""
        if report.failed:
            self.failed.append(report.nodeid)


def fingerprint(module_path: Path, pytest_args: list[str]) -> str:
    """A hash of the module, the pytest arguments and the test files they name."""
    digest = hashlib.sha256(module_path.read_bytes())
    digest.update(json.dumps(pytest_args).encode())
    files = {Path("tests/conftest.py")}
    for arg in pytest_args:
        candidate = Path(arg.split("::")[0])
        if candidate.suffix == ".py" and candidate.exists():
            files.add(candidate)
    for path in sorted(files):
        if path.exists():
            digest.update(str(path).encode() + path.read_bytes())
    return digest.hexdigest()


def record_in_child(module_path: Path, pytest_args: list[str], out: Path) -> None:
    """In a forked child: run the tests under coverage and write the map to ``out``."""
    import coverage

    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    sys.dont_write_bytecode = True
    cov = coverage.Coverage(
        data_file=None, include=[str(module_path.resolve())], config_file=False
    )
    recorder = ContextRecorder(cov)
    cov.start()
    try:
        code = int(pytest.main(pytest_args, plugins=[recorder]))
    finally:
        cov.stop()
    data = cov.get_data()
    measured = data.measured_files()
    by_line = data.contexts_by_lineno(measured.pop()) if measured else {}
    tests_of: dict[str, set[str]] = {}
    for nodeid, fixtures in recorder.fixtures.items():
        for fixture in fixtures:
            tests_of.setdefault(FIXTURE_PREFIX + fixture, set()).add(nodeid)
    lines = {}
    for line, contexts in by_line.items():
        tests: set[str] = set()
        for context in contexts:
            if context.startswith(FIXTURE_PREFIX):
                tests |= tests_of.get(context, set())
            elif context in recorder.seconds:
                tests.add(context)
        lines[str(line)] = sorted(tests)
    out.write_text(
        json.dumps(
            dict(
                exit_code=code,
                failed=recorder.failed,
                seconds=recorder.seconds,
                lines=lines,
            )
        )
    )


def record(module_path: Path, pytest_args: list[str], timeout: float) -> dict:
    """Run the tests once under coverage in a forked child; return the line-to-tests map."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "map.json"
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 3
            try:
                record_in_child(module_path, pytest_args, out)
                code = 0
            except BaseException as error:  # noqa: BLE001 - report anything
                print(f"coverage recording failed: {error!r}", flush=True)
            finally:
                os._exit(code)
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                raise RuntimeError(
                    f"recording coverage of {module_path} ran past {timeout:.0f} s"
                )
            time.sleep(0.1)
        if os.waitstatus_to_exitcode(status) != 0 or not out.exists():
            raise RuntimeError(f"recording coverage of {module_path} failed")
        result = json.loads(out.read_text())
    if result["exit_code"] != 0 or result["failed"]:
        raise RuntimeError(
            f"the tests fail on the unmutated {module_path} ({result['failed']}): "
            "fix them before mutation testing"
        )
    return result


def coverage_map(
    module_path: Path, pytest_args: list[str], cache: Path, timeout: float
) -> dict:
    """The cached line-to-tests map of a module, recorded afresh when its inputs changed."""
    key = fingerprint(module_path, pytest_args)
    if cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("fingerprint") == key:
            return cached
    started = time.monotonic()
    result = record(module_path, pytest_args, timeout)
    result["fingerprint"] = key
    result["record_seconds"] = time.monotonic() - started
    cache.write_text(json.dumps(result))
    print(
        f"recorded which of {len(result['seconds'])} tests run each line of "
        f"{module_path} ({result['record_seconds']:.0f} s)",
        flush=True,
    )
    return result


def innermost_statement(tree: ast.AST, position: tuple[int, int]):
    """The innermost statement holding ``position`` and the functions around it (outermost first)."""
    found, functions = None, []
    node = tree
    while True:
        inner = None
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, ast.stmt):
                continue
            start = min(
                [(child.lineno, child.col_offset)]
                + [
                    (d.lineno, d.col_offset)
                    for d in getattr(child, "decorator_list", ())
                ]
            )
            end = (child.end_lineno, child.end_col_offset)
            if start <= position < end:
                inner = child
                break
        if inner is None:
            return found, functions
        if found is not None and isinstance(
            found, (ast.FunctionDef, ast.AsyncFunctionDef)
        ):
            functions.append(found)
        found, node = inner, inner


def header_lines(statement: ast.stmt) -> range:
    """The lines of a statement, without the body of a compound one."""
    bodies = [
        getattr(statement, field)[0].lineno
        for field in ("body", "handlers", "orelse", "finalbody")
        if getattr(statement, field, None)
    ]
    last = min(bodies) - 1 if bodies else statement.end_lineno
    return range(statement.lineno, max(last, statement.lineno) + 1)


def covering_tests(
    tree: ast.AST, position: tuple[int, int], recorded: dict
) -> list[str]:
    """The node ids of the tests that can see a mutant at ``position``, fastest first."""
    statement, functions = innermost_statement(tree, position)
    if statement is not None and functions and not isinstance(statement, DEFINITIONS):
        lines = header_lines(statement)
    else:  # a def line (a call can fail before the body runs) or import time
        lines = None
    if lines is None:
        tests = set(recorded["seconds"])
    else:
        tests = set()
        for line in lines:
            tests.update(recorded["lines"].get(str(line), ()))
    return sorted(tests, key=lambda nodeid: (recorded["seconds"][nodeid], nodeid))


class Selection:
    """A pytest plugin that keeps only ``nodeids`` of the collected tests, in that order."""

    def __init__(self, nodeids: list[str]):
        self.order = {nodeid: rank for rank, nodeid in enumerate(nodeids)}

    def pytest_collection_modifyitems(self, session, config, items):
        """Drop the tests not selected and sort the rest in the selection's order."""
        kept = [item for item in items if item.nodeid in self.order]
        dropped = [item for item in items if item.nodeid not in self.order]
        kept.sort(key=lambda item: self.order[item.nodeid])
        if dropped:
            config.hook.pytest_deselected(items=dropped)
        items[:] = kept
