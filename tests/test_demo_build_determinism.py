"""``scripts/build_demo_release.py`` is deterministic from its seed.

Two separate processes (so string hashing and any process-level state differ)
build a tiny release from the same small synthetic corpus: a few model steps,
one small SAE per hook.  Every file must be byte-identical, except
``release.json``'s timing fields (``build_seconds``, each SAE's
``train_seconds``), which measure the machine, not the build.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORDS = (
    "the king queen lord lady sword crown night day love death fair foul good "
    "ill heaven earth fire water blood honour grace tongue heart eyes hand "
    "speak hear come go stay fly strike kneel weep laugh sleep wake dream"
).split()


def _write_corpus(folder: Path) -> None:
    """Three small works of seeded pseudo-verse, named like the real corpus."""
    rng = random.Random(0)
    folder.mkdir()
    for work in ("alpha", "beta", "gamma"):
        lines = [
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))).capitalize()
            + rng.choice([",", ".", ";", "!", "?"])
            for _ in range(1500)
        ]
        (folder / f"{work}_gut.txt").write_text("\n".join(lines))


def _build(corpus: Path, out: Path) -> None:
    command = [
        sys.executable,
        str(ROOT / "scripts" / "build_demo_release.py"),
        "--corpus-dir", str(corpus),
        "--model-steps", "6",
        "--sae-tokens", "8192",
        "--sae-batch", "512",
        "--sae-ids", "resid0-topk-512", "resid1-topk-512",
        "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONHASHSEED": "random", "TQDM_DISABLE": "1"}
    subprocess.run(command, check=True, env=env, capture_output=True)


def _without_timings(release: dict) -> str:
    release.pop("build_seconds")
    for sae in release["saes"].values():
        sae.pop("train_seconds")
    return json.dumps(release, sort_keys=True)


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != "release.json"
    }


@pytest.mark.slow
def test_two_builds_from_the_same_seed_are_identical(tmp_path):
    corpus = tmp_path / "corpus"
    _write_corpus(corpus)
    first, second = tmp_path / "first", tmp_path / "second"
    _build(corpus, first)
    _build(corpus, second)
    digests = _digests(first)
    assert {"model/model.safetensors", "data/eval_tokens.safetensors"} <= set(digests)
    assert any(name.startswith("saes/resid1-topk-512/") for name in digests)
    assert digests == _digests(second)
    releases = [json.loads((f / "release.json").read_text()) for f in (first, second)]
    assert releases[0]["saes"]["resid0-topk-512"]["train_seconds"] > 0
    assert _without_timings(releases[0]) == _without_timings(releases[1])
