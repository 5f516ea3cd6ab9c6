"""Mutation testing of the numerical core with cosmic-ray: one command, a kill rate per module.

    python scripts/mutation.py mutation/mdl_entropy.toml [more configs ...]
    python scripts/mutation.py --sample 120 mutation/llc_estimator.toml

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
one config share its mutants (each skips those another has done).  It is a periodic
check, not part of CI.
"""

from __future__ import annotations

import argparse
import ast
import importlib.abc
import importlib.util
import os
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import toml  # cosmic-ray's own TOML reader
from cosmic_ray.mutating import mutate_code
from cosmic_ray.plugins import get_operator
from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkResult

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


def run_mutant(name, path, source, args, timeout) -> tuple[TestOutcome, str]:
    """Run pytest ``args`` in a forked child that imports ``source`` as module ``name``."""
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
                import pytest

                code = int(pytest.main(args))
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


def exec_forked(config: Path, database: Path) -> None:
    """Run every pending mutant of a session in forked children."""
    settings = toml.load(config)["cosmic-ray"]
    args = pytest_args(settings["test-command"])
    timeout = float(settings["timeout"])
    preload()
    with use_db(str(database), WorkDB.Mode.open) as db:
        pending = list(db.pending_work_items)
        spans: dict[Path, list] = {}
        for index, item in enumerate(pending, 1):
            if has_result(db, item.job_id):  # another worker on this session did it
                continue
            (spec,) = item.mutations
            path = spec.module_path
            original = path.read_text()
            if spans.get(path) is None:
                spans[path] = annotation_spans(path)
            if any(a <= tuple(spec.start_pos) < b for a, b in spans[path]):
                skip(db, [item.job_id], IN_ANNOTATION)
                continue
            operator = get_operator(spec.operator_name)(**(spec.operator_args or {}))
            mutated = mutate_code(original, operator, spec.occurrence)
            if mutated is None:
                db.set_result(
                    item.job_id, WorkResult(worker_outcome=WorkerOutcome.NO_TEST)
                )
                continue
            started = time.monotonic()
            outcome, output = run_mutant(
                module_name(path), path.resolve(), mutated, args, timeout
            )
            db.set_result(
                item.job_id,
                WorkResult(
                    worker_outcome=WorkerOutcome.NORMAL,
                    test_outcome=outcome,
                    output=output,
                    diff=diff_of(original, mutated, path),
                ),
            )
            print(
                f"[{index}/{len(pending)}] {path}:{spec.start_pos[0]} {spec.operator_name} "
                f"#{spec.occurrence}: {outcome.value} ({time.monotonic() - started:.1f} s)",
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
        items = sorted(db.pending_work_items, key=lambda item: item.job_id)
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


def run_session(
    config: Path, sample: int | None, seed: int, cosmic_ray_exec: bool
) -> Path:
    """Initialise (once), optionally sample, and execute the session of ``config``."""
    sessions = config.parent / "sessions"
    sessions.mkdir(exist_ok=True)
    database = sessions / f"{config.stem}.sqlite"
    if not database.exists():
        subprocess.run(["cosmic-ray", "init", str(config), str(database)], check=True)
        functions = toml.load(config).get("scope", {}).get("functions", [])
        narrow_session(database, functions, sample, seed)
    if cosmic_ray_exec:
        subprocess.run(["cosmic-ray", "exec", str(config), str(database)], check=True)
    else:
        exec_forked(config, database)
    return database


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
                    print(f"  survived: {where}")
    return counts


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
        "--cosmic-ray-exec", action="store_true", help="use cosmic-ray's own executor"
    )
    options = parser.parse_args(argv)
    any_survived = False
    for config in options.configs:
        database = config.parent / "sessions" / f"{config.stem}.sqlite"
        if options.rerun_survivors and database.exists():
            print(
                f"{config.stem}: {forget_survivors(config, database)} survivors to test again"
            )
        database = run_session(
            config, options.sample, options.seed, options.cosmic_ray_exec
        )
        counts = report(config, database)
        tested = counts["killed"] + counts["survived"]
        rate = counts["killed"] / tested if tested else float("nan")
        print(
            f"{config.stem}: {counts['killed']}/{tested} non-equivalent mutants killed "
            f"({rate:.1%}); {counts['equivalent']} equivalent, "
            f"{counts['incompetent']} incompetent (the mutant does not import), "
            f"{counts['out_of_scope']} out of scope, {counts['skipped']} not sampled, "
            f"{counts['pending']} pending"
        )
        any_survived |= counts["survived"] > 0
    return 1 if any_survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
