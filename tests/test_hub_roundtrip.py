"""A full run of the demo release with every installed plugin, published and loaded back.

The run pushes itself (``run(..., push_to_hub=...)``) to the loopback Hub
double; then every SAE folder of the run (the meta-SAE, the tokenized SAE,
any other) is loaded back by name with ``SAE.from_pretrained(repo, folder)``
and must equal the SAE in the run directory.
"""

from __future__ import annotations

import json

import pytest
import torch
from hub_double import TOKEN
from sae_lens import SAE

import sae_lens_ext
from sae_lens_ext.plugins import get_registry

REPO = "alice/demo-analyses"
PREFIX = "runs/demo"


@pytest.fixture
def full_run(hub, tmp_path, monkeypatch):
    """The demo release through every installed plugin, pushed to the double."""
    monkeypatch.delenv("SAE_LENS_EXT_PLUGINS", raising=False)
    output = sae_lens_ext.run(
        out_dir=tmp_path / "run",
        n_tokens=2048,
        batch_size=16,
        push_to_hub=REPO,
        push_options={"token": TOKEN, "prefix": PREFIX},
    )
    return output, tmp_path / "run"


@pytest.mark.slow
def test_full_demo_run_round_trips_through_the_hub(full_run, hub, monkeypatch):
    output, run_dir = full_run
    summary = json.loads((run_dir / "summary.json").read_text())
    installed = set(get_registry().analyses()) - {"base"}
    assert summary["status"] == "complete"
    assert set(summary["analyses"]) == installed | {"base"}
    failed = {k: v["error"] for k, v in summary["analyses"].items() if "error" in v}
    assert not failed

    folders = sorted(
        path.parent.relative_to(run_dir).as_posix()
        for path in run_dir.rglob("cfg.json")
    )
    owners = {folder.split("/")[0] for folder in folders}
    assert {"meta_sae", "tokenized"} <= owners, folders

    assert output.push.commit == hub.head(REPO)
    files = hub.files(REPO)
    assert f"{PREFIX}/summary.json" in files and f"{PREFIX}/README.md" in files
    card = files[f"{PREFIX}/README.md"].decode()
    for name in installed:
        assert name in card

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    get_registry().register_architectures()  # the tokenized architecture
    for folder in folders:
        local = SAE.load_from_disk(run_dir / folder)
        loaded = SAE.from_pretrained(REPO, f"{PREFIX}/{folder}")
        assert type(loaded) is type(local), folder
        assert loaded.cfg.to_dict() == local.cfg.to_dict(), folder
        for name, value in local.state_dict().items():
            assert torch.equal(loaded.state_dict()[name], value), (folder, name)
