"""Loading SAEs by name: local folders, a pre-filled HF cache, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import make_sae, prefill_hf_cache, run_offline

from sae_lens_ext import load_sae
from sae_lens_ext.loading import SAELoadError


def test_local_folder_round_trip(tmp_path):
    sae = make_sae()
    sae.save_model(tmp_path / "my-sae")
    loaded = load_sae(str(tmp_path), "my-sae")
    assert torch.equal(loaded.W_dec, sae.W_dec)
    assert loaded.cfg.metadata.hook_name == "blocks.0.hook_resid_post"


def test_missing_weights_file_names_the_fix(tmp_path):
    make_sae().save_model(tmp_path / "sae")
    (tmp_path / "sae" / "sae_weights.safetensors").unlink()
    with pytest.raises(SAELoadError, match="save_model"):
        load_sae(str(tmp_path / "sae"))


def test_corrupt_weights_file_is_reported(tmp_path):
    make_sae().save_model(tmp_path / "sae")
    weights = tmp_path / "sae" / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(SAELoadError, match="corrupt or truncated"):
        load_sae(str(tmp_path / "sae"))


def test_corrupt_config_is_reported(tmp_path):
    make_sae().save_model(tmp_path / "sae")
    (tmp_path / "sae" / "cfg.json").write_text("{not json")
    with pytest.raises(SAELoadError, match="not valid JSON"):
        load_sae(str(tmp_path / "sae"))


def test_unknown_release_lists_close_names():
    with pytest.raises(SAELoadError, match="Did you mean 'gpt2-small-res-jb'") as err:
        load_sae("gpt2-small-res-jbb", "blocks.0.hook_resid_pre")
    # SAE-Lens's directory holds tens of releases: the message names the close
    # ones and the count, not the whole directory
    assert "releases are known" in str(err.value)
    assert "gemma-scope" not in str(err.value)


def test_unknown_sae_id_in_sae_lens_release_lists_close_ids():
    with pytest.raises(SAELoadError, match="blocks.8.hook_resid_pre"):
        load_sae("gpt2-small-res-jb", "blocks.8.hook_resid_pr")


def test_from_pretrained_through_a_prefilled_offline_cache(tmp_path):
    """The real SAE.from_pretrained path, served from an HF cache, no network."""
    sae = make_sae()
    prefill_hf_cache(tmp_path / "hub", "someone/tiny-saes", "layer0", sae)
    d_sae, total = run_offline(
        """
        from sae_lens_ext import load_sae
        sae = load_sae("someone/tiny-saes", "layer0")
        print("LOADED", sae.cfg.d_sae, float(sae.W_dec.sum()))
        """,
        tmp_path / "hub",
        tmp_path / "hf-home",
    )
    assert int(d_sae) == sae.cfg.d_sae
    assert float(total) == pytest.approx(sae.W_dec.sum().item(), rel=1e-5)


def test_offline_miss_names_the_repo_and_the_fix(tmp_path, monkeypatch):
    script = "from sae_lens_ext import load_sae\nload_sae('someone/absent', 'layer0')\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True
    )
    assert done.returncode != 0
    assert "someone/absent" in done.stderr and "HF_HUB_OFFLINE" in done.stderr
