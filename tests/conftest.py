"""Shared fixtures: a tiny TransformerLens model, an SAE on its residual stream."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

TINY_HOOK = "blocks.0.hook_resid_post"
# Small settings for the slow plugins on the demo release (seconds per run).
SMALL_DEMO_CONFIG = {
    "meta_sae": {"steps": 30, "batch_size": 64, "null_seeds": 2},
    "llc": {
        "max_tokens": 32,
        "num_chains": 2,
        "num_draws": 12,
        "num_burnin": 4,
        "step_size": 1e-4,
    },
    "tokenized": {"k": 4, "batch_size": 64, "buffer_rows": 512, "lr": 3e-3},
}


@pytest.fixture(scope="session")
def tiny_model():
    """A 1-layer, 16-wide TransformerLens model with random weights."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=1,
        d_model=16,
        n_ctx=12,
        d_head=8,
        n_heads=2,
        d_mlp=32,
        d_vocab=40,
        act_fn="gelu",
        normalization_type="LN",
        device="cpu",
    )
    return HookedTransformer(cfg).eval()


def make_sae(d_in=16, d_sae=48, hook_name=TINY_HOOK, seed=0):
    """A ReLU SAE-Lens SAE with metadata naming the tiny model and hook."""
    from sae_lens import StandardSAE, StandardSAEConfig

    torch.manual_seed(seed)
    cfg = StandardSAEConfig(d_in=d_in, d_sae=d_sae)
    cfg.metadata.model_name = "tiny"
    cfg.metadata.hook_name = hook_name
    cfg.metadata.context_size = 12
    cfg.metadata.prepend_bos = True
    sae = StandardSAE(cfg)
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.5)
        sae.W_dec.copy_(sae.W_enc.T / sae.W_enc.T.norm(dim=1, keepdim=True))
        sae.b_enc.fill_(-0.1)
    return sae


def run_tiny(model, dataset, out, **kwargs):
    """``sae_lens_ext.run`` of the base analysis on a fresh tiny SAE."""
    from sae_lens_ext import run

    options = dict(
        sae=make_sae(),
        model=model,
        dataset=dataset,
        plugins="base",
        out_dir=out,
        n_tokens=400,
        batch_size=8,
    )
    options.update(kwargs)
    return run(**options)


def runner_config(
    tmp_path, sae_cfg, hook_name=TINY_HOOK, model_name="tiny", **overrides
):
    """A small SAE-Lens training-runner config for a tiny model (12-token context);
    ``overrides`` replace any of its fields."""
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig

    fields = dict(
        sae=sae_cfg,
        model_name=model_name,
        hook_name=hook_name,
        dataset_path=model_name,
        is_dataset_tokenized=True,
        context_size=12,
        training_tokens=64 * 40,
        train_batch_size_tokens=64,
        store_batch_size_prompts=8,
        n_batches_in_buffer=16,
        prepend_bos=False,
        logger=LoggingConfig(log_to_wandb=False),
        output_path=str(tmp_path / "out"),
        device="cpu",
    )
    return LanguageModelSAERunnerConfig(**(fields | overrides))


@pytest.fixture
def tiny_sae():
    """An SAE on the tiny model's residual stream."""
    return make_sae()


@pytest.fixture(scope="session")
def tiny_tokens():
    """64 sequences of 12 token ids for the tiny model, BOS (0) first."""
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(1, 40, (64, 12), generator=generator)
    tokens[:, 0] = 0
    return tokens


@pytest.fixture
def fresh_registry():
    """Forget loaded plugins before and after a test that changes them."""
    from sae_lens_ext.plugins import reset_registry

    reset_registry()
    yield
    reset_registry()


def register_model_release(name: str, model, tokens) -> None:
    """Register a release ``name`` that brings ``model`` and ``tokens`` (no SAEs);
    use with ``fresh_registry``."""
    from sae_lens_ext import Release, hookimpl
    from sae_lens_ext.plugins import get_registry

    class ModelRelease:
        @hookimpl
        def register_releases(self, register):
            register(
                Release(
                    name=name,
                    saes={},
                    load_model=lambda device: model,
                    load_tokens=lambda n_seq: tokens,
                )
            )

    get_registry().register(ModelRelease(), name=f"{name}-release")


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A running HubDouble with the huggingface_hub client pointed at it."""
    from hub_double import BOB_TOKEN, TOKEN, HubDouble
    from huggingface_hub import constants

    double = HubDouble({TOKEN: "alice", BOB_TOKEN: "bob"}).start()
    monkeypatch.setattr(constants, "ENDPOINT", double.url)
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        double.url + "/{repo_id}/resolve/{revision}/{filename}",
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    yield double
    double.stop()


def prefill_hf_cache(cache: Path, repo_id: str, folder: str, sae) -> None:
    """Save ``sae`` as ``folder`` of model repo ``repo_id`` in an HF cache layout."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    sae.save_model(repo / "snapshots" / commit / folder)


def run_offline(script: str, cache: Path, home: Path) -> list[str]:
    """Run ``script`` in a fresh Python with ``HF_HUB_OFFLINE=1`` on ``cache``.

    Returns the fields of the line the script printed starting with ``LOADED``.
    """
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(cache),
        "HF_HOME": str(home),
    }
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("LOADED"))
    return line.split()[1:]


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread avoids contention on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
