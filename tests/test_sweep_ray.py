"""The Ray executor on a local cluster gives the same files and metrics as the local one."""

from __future__ import annotations

import json

import pytest
from conftest import TINY_HOOK, make_sae

from sae_lens_ext.sweep import sweep

ray = pytest.importorskip(
    "ray", reason="the ray extra: pip install 'sae-lens-ext[ray]'"
)

SAES = {
    "post-48": dict(d_sae=48, hook_name=TINY_HOOK, seed=0),
    "pre-64": dict(d_sae=64, hook_name="blocks.0.hook_resid_pre", seed=2),
    "post-96": dict(d_sae=96, hook_name=TINY_HOOK, seed=1),
}


@pytest.fixture(scope="module")
def local_cluster():
    """A two-CPU Ray cluster in this machine, as CI starts it."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def files_of(folder):
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    )


@pytest.mark.slow
def test_ray_executor_matches_local(local_cluster, tiny_model, tiny_tokens, tmp_path):
    for sae_id, kwargs in SAES.items():
        make_sae(**kwargs).save_model(tmp_path / "release" / sae_id)
    make_sae(d_in=8, d_sae=24).save_model(tmp_path / "release" / "wrong-width")
    options = dict(
        plugins="base,mdl",
        model=tiny_model,
        dataset=tiny_tokens,
        n_tokens=400,
        batch_size=8,
        device="cpu",
        memory_budget_gb=1e-9,  # one SAE per group: one Ray task each
    )
    local = sweep(str(tmp_path / "release"), out_dir=tmp_path / "local", **options)
    remote = sweep(
        str(tmp_path / "release"), out_dir=tmp_path / "ray", executor="ray", **options
    )
    assert len(remote.groups) == 4
    assert set(remote.failures) == set(local.failures) == {"wrong-width"}
    assert files_of(remote.sweep_dir / "post-48") == files_of(
        local.sweep_dir / "post-48"
    )
    assert files_of(remote.sweep_dir) == files_of(local.sweep_dir)
    for sae_id in SAES:
        ours, theirs = (
            json.loads((d / sae_id / "summary.json").read_text())
            for d in (local.sweep_dir, remote.sweep_dir)
        )
        assert ours["status"] == theirs["status"] == "complete"
        assert {n: e["metrics"] for n, e in ours["analyses"].items()} == {
            n: e["metrics"] for n, e in theirs["analyses"].items()
        }
    columns = [c for c in local.comparison if c.startswith(("base.", "mdl."))]
    assert local.comparison[columns].equals(remote.comparison[columns])
    # a rerun on Ray resumes like the local executor: nothing left to do
    again = sweep(
        str(tmp_path / "release"), out_dir=tmp_path / "ray", executor="ray", **options
    )
    assert again.groups == [["wrong-width"]]
