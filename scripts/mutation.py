"""Mutation testing of the numerical core with cosmic-ray: one command, a kill rate per module.

    python scripts/mutation.py mutation/mdl_entropy.toml [more configs ...]

For each config (one module and the tests that target it) this creates a
session database next to it under ``mutation/sessions/``, runs every mutant
(cosmic-ray edits the module in place and restores it), then prints the
kill rate and the surviving mutants.  Run it on a clean checkout whose code
is the one Python imports (``pip install -e .``, or ``PYTHONPATH`` pointing
at the checkout and its ``plugins/``); a session interrupted half way resumes
when run again.  It is a periodic check, not part of CI.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import TestOutcome


def run_session(config: Path) -> Path:
    """Initialise (once) and execute the session of ``config``; its database path."""
    sessions = config.parent / "sessions"
    sessions.mkdir(exist_ok=True)
    database = sessions / f"{config.stem}.sqlite"
    if not database.exists():
        subprocess.run(["cosmic-ray", "init", str(config), str(database)], check=True)
    subprocess.run(["cosmic-ray", "exec", str(config), str(database)], check=True)
    return database


def report(database: Path) -> tuple[int, int, int, int]:
    """Print survivors; return (killed, survived, incompetent, pending) counts."""
    killed = survived = incompetent = 0
    with use_db(str(database), WorkDB.Mode.open) as db:
        pending = sum(1 for _ in db.pending_work_items)
        for item, result in db.completed_work_items:
            if result.test_outcome == TestOutcome.KILLED:
                killed += 1
            elif result.test_outcome == TestOutcome.INCOMPETENT:
                incompetent += 1
            else:
                survived += 1
                for spec in item.mutations:
                    print(
                        f"  survived: {spec.module_path}:{spec.start_pos[0]} "
                        f"{spec.operator_name} #{spec.occurrence}"
                    )
    return killed, survived, incompetent, pending


def main(configs: list[str]) -> int:
    """Run each config's session and print its kill rate; 1 if any mutant survived."""
    if not configs:
        print(__doc__)
        return 2
    any_survived = False
    for name in configs:
        config = Path(name)
        database = run_session(config)
        killed, survived, incompetent, pending = report(database)
        tested = killed + survived
        rate = killed / tested if tested else float("nan")
        print(
            f"{config.stem}: {killed}/{tested} mutants killed ({rate:.1%}); "
            f"{incompetent} incompetent (the mutant does not import), {pending} pending"
        )
        any_survived |= survived > 0
    return 1 if any_survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
