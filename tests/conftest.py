"""Shared fixtures: a tiny TransformerLens model, an SAE on its residual stream."""

from __future__ import annotations

import pytest
import torch

TINY_HOOK = "blocks.0.hook_resid_post"


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
