"""Spliced CE and KL: resumed passes, and passes shared by several SAEs.

``downstream_metrics_many`` runs the clean and zero-ablated passes once for
all the SAEs at a hook and resumes the edited passes at the hook's block.
Each SAE's metrics must be exactly those of ``downstream_metrics`` alone and
of whole passes (the same float operations), and match whole passes written
by hand with SAE-Lens's public ``encode``/``decode``, on SAEs unlike ours.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_sae

import sae_lens_ext.downstream as downstream
from sae_lens_ext.downstream import (
    LOGIT_CHUNK,
    downstream_metrics,
    downstream_metrics_many,
    resume_point,
)


@pytest.fixture(scope="module")
def two_layer_model():
    """A 2-layer, 16-wide TransformerLens model with random weights."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(1)
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=16, n_ctx=12, d_head=8, n_heads=2, d_mlp=32,
        d_vocab=40, act_fn="gelu", normalization_type="LN", device="cpu",
    )  # fmt: skip
    return HookedTransformer(cfg).eval()


def saes_unlike_ours(hook_name: str) -> list:
    """ReLU with a rescaled non-unit decoder and a bias, TopK, JumpReLU, bf16 ReLU."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, TopKSAE, TopKSAEConfig

    rescaled = make_sae(d_sae=40, hook_name=hook_name, seed=3)
    with torch.no_grad():
        rescaled.W_dec.mul_(torch.linspace(0.3, 2.0, 40)[:, None])
        rescaled.b_dec.normal_(0, 0.5)
    torch.manual_seed(4)
    topk = TopKSAE(TopKSAEConfig(d_in=16, d_sae=64, k=5))
    jump = JumpReLUSAE(JumpReLUSAEConfig(d_in=16, d_sae=32))
    with torch.no_grad():
        for sae in (topk, jump):
            sae.W_enc.normal_(0, 0.5)
            sae.W_dec.normal_(0, 0.3)
        jump.threshold.fill_(0.2)
    bf16 = make_sae(d_sae=24, hook_name=hook_name, seed=5).to(torch.bfloat16)
    return [rescaled, topk, jump, bf16]


def by_hand(model, sae, hook_name, tokens, mask) -> dict:
    """Whole passes, the SAE's ``decode(encode(x))`` put in by a hand-written hook."""

    def replace(acts, new, chunk_mask):
        keep = chunk_mask[..., None]
        return torch.where(keep, new.to(acts.dtype), acts)

    sums = dict.fromkeys(("clean", "spliced", "zeroed", "kl_sae", "kl_zero"), 0.0)
    n_loss = 0
    with torch.no_grad():
        for chunk, chunk_mask in zip(
            tokens.split(LOGIT_CHUNK), mask.split(LOGIT_CHUNK), strict=True
        ):
            clean, loss = model(chunk, return_type="both", loss_per_token=True)
            sums["clean"] += loss.sum().item()
            n_loss += loss.numel()
            log_clean = clean.log_softmax(-1)

            def sae_hook(acts, hook, m=chunk_mask):
                x = acts.to(sae.W_dec.dtype)
                return replace(acts, sae.decode(sae.encode(x)), m)

            def zero_hook(acts, hook, m=chunk_mask):
                return replace(acts, torch.zeros_like(acts), m)

            for key, hook in (("spliced", sae_hook), ("zeroed", zero_hook)):
                logits, loss = model.run_with_hooks(
                    chunk, return_type="both", loss_per_token=True,
                    fwd_hooks=[(hook_name, hook)],
                )  # fmt: skip
                sums[key] += loss.sum().item()
                kl = torch.nn.functional.kl_div(
                    logits.log_softmax(-1), log_clean, log_target=True, reduction="sum"
                )
                sums["kl_sae" if key == "spliced" else "kl_zero"] += kl.item()
    n_kl = tokens.numel()
    return {
        "ce_loss_clean": sums["clean"] / n_loss,
        "ce_loss_spliced": sums["spliced"] / n_loss,
        "ce_loss_zero_ablated": sums["zeroed"] / n_loss,
        "kl_div_with_sae": sums["kl_sae"] / n_kl,
        "kl_div_with_ablation": sums["kl_zero"] / n_kl,
    }


HOOKS = {
    # hook: the block the edited passes resume at (None: whole passes)
    "blocks.0.hook_resid_post": 1,
    "blocks.1.hook_resid_pre": 1,
    "blocks.0.hook_mlp_out": 0,
    "blocks.1.ln2.hook_normalized": 1,
    "blocks.1.hook_resid_post": 2,  # the last block: only ln_final and unembed
    "hook_embed": None,
}


@pytest.mark.parametrize("hook_name", HOOKS)
def test_shared_and_resumed_passes_equal_whole_passes(
    two_layer_model, tiny_tokens, hook_name, monkeypatch
):
    model = two_layer_model
    tokens = tiny_tokens[:20]  # three chunks, the last one short
    generator = torch.Generator().manual_seed(0)
    mask = torch.rand(tokens.shape, generator=generator) > 0.3
    mask[:, 0] = False  # e.g. BOS left out
    saes = saes_unlike_ours(hook_name)
    point = resume_point(model, hook_name)
    assert (point and point.layer) == HOOKS[hook_name] or point is HOOKS[hook_name]

    shared = downstream_metrics_many(model, saes, hook_name, tokens, mask)
    alone = [downstream_metrics(model, sae, hook_name, tokens, mask) for sae in saes]
    assert shared == alone  # exactly: sharing changes no operation
    monkeypatch.setattr(downstream, "resume_point", lambda *_: None)
    whole = downstream_metrics_many(model, saes, hook_name, tokens, mask)
    assert shared == whole  # exactly: resuming changes no operation
    for sae, metrics in zip(saes, shared, strict=True):
        expected = by_hand(model, sae, hook_name, tokens, mask)
        for name, value in expected.items():
            assert metrics[name] == pytest.approx(value, rel=1e-5, abs=1e-7), name
        # the SAE changes the loss: the comparison can fail
        assert abs(metrics["ce_loss_spliced"] - metrics["ce_loss_clean"]) > 1e-4
    spliced = {m["ce_loss_spliced"] for m in shared}
    assert len(spliced) == len(saes)  # each SAE its own spliced pass


def test_edited_passes_skip_the_blocks_before_the_hook(two_layer_model, tiny_tokens):
    """Resumed at block 1, the edited passes never run block 0 again."""
    model = two_layer_model
    calls = []
    handle = model.blocks[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        saes = saes_unlike_ours("blocks.0.hook_resid_post")
        downstream_metrics_many(
            model, saes, "blocks.0.hook_resid_post", tiny_tokens[:16]
        )
    finally:
        handle.remove()
    assert len(calls) == 2  # two chunks: the clean pass of each, nothing more
