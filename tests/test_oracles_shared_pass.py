"""The shared pass against a full model run and SAE-Lens's own forward pass.

The expected activations come from a full ``run_with_cache`` (no early stop)
indexed position by position in Python; the expected SAE outputs from
SAE-Lens's ``encode`` and ``forward`` on each batch.  Recording analyses check
what each one is handed, in which order and with which offsets.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_HOOK, make_sae

from sae_lens_ext.positions import SKIP_BOS
from sae_lens_ext.shared_pass import (
    ActivationError,
    HookActivations,
    check_activations,
    model_activations,
    multi_hook_activations,
    run_shared_pass,
    stop_layer,
)


def test_stop_layer_is_one_past_the_hooks_block():
    assert stop_layer("blocks.0.hook_resid_post") == 1
    assert stop_layer("blocks.11.attn.hook_z") == 12
    assert stop_layer("hook_embed") is None


@pytest.mark.parametrize(("skip_bos", "first"), [(True, 1), (False, 0)])
def test_model_activations_are_the_full_runs_cache_at_kept_positions(
    tiny_model, tiny_tokens, skip_bos, first
):
    tokens = tiny_tokens[:6]
    batches = [tokens[:4], tokens[4:], tokens[:3, :1]]  # the last keeps no position
    _, cache = tiny_model.run_with_cache(tokens)
    full = cache[TINY_HOOK]
    got = list(model_activations(tiny_model, TINY_HOOK, batches, skip_bos=skip_bos))
    if not skip_bos:
        assert len(got) == 3 and got[2].positions.tolist() == [[0, 0], [1, 0], [2, 0]]
        got = got[:2]
    assert len(got) == 2
    for batch_tokens, acts, start in zip(batches[:2], got, (0, 4), strict=True):
        rows = [(s, p) for s in range(len(batch_tokens)) for p in range(first, 12)]
        assert acts.positions.tolist() == [list(row) for row in rows]
        expected = torch.stack([full[start + s, p] for s, p in rows])
        torch.testing.assert_close(acts.sae_in, expected, rtol=1e-5, atol=1e-5)
        assert acts.tokens.tolist() == [int(batch_tokens[s, p]) for s, p in rows]
        assert torch.equal(acts.token_context, batch_tokens)


def test_model_activations_skip_the_bos_position_by_default(tiny_model, tiny_tokens):
    (acts,) = model_activations(tiny_model, TINY_HOOK, [tiny_tokens[:2]])
    assert acts.positions[:, 1].min() == 1
    assert len(acts.positions) == 2 * 11


def test_hooks_with_and_without_a_layer_share_one_full_pass(tiny_model, tiny_tokens):
    # hook_embed has no block: the pass cannot stop early, and must not fail
    tokens = tiny_tokens[:3]
    _, cache = tiny_model.run_with_cache(tokens)
    hooks = ["hook_embed", TINY_HOOK]
    (got,) = multi_hook_activations(tiny_model, hooks, [tokens], SKIP_BOS)
    for hook in hooks:
        expected = cache[hook][:, 1:].reshape(-1, cache[hook].shape[-1])
        torch.testing.assert_close(got[hook].sae_in, expected, rtol=1e-5, atol=1e-5)


def test_model_activations_options_are_keyword_only(tiny_model):
    # a bare True/False after the batches would be unreadable; the signature refuses it
    with pytest.raises(TypeError, match="positional"):
        model_activations(tiny_model, TINY_HOOK, [], False)
    with pytest.raises(TypeError, match="positional"):
        run_shared_pass(None, [], [], TINY_HOOK)


def test_a_batch_with_no_kept_position_is_skipped_not_the_end(tiny_model, tiny_tokens):
    # the first batch holds only BOS positions: the batches after it still come
    batches = [tiny_tokens[:2, :1], tiny_tokens[2:4]]
    got = list(model_activations(tiny_model, TINY_HOOK, batches))
    assert len(got) == 1
    assert torch.equal(got[0].token_context, tiny_tokens[2:4])


def test_width_check_compares_values_not_identities():
    # widths above 256 are distinct int objects in CPython: `is not` would reject them
    width = int("300")
    check_activations(torch.zeros(3, width), 300, TINY_HOOK)
    with pytest.raises(ActivationError, match="width 301.*d_in=300"):
        check_activations(torch.zeros(3, 301), 300, TINY_HOOK)


class Recorder:
    """An analysis that keeps every batch it is handed (and can fail on one)."""

    def __init__(self, fail_at: int | None = None):
        self.batches = []
        self.fail_at = fail_at

    def update(self, batch) -> None:
        """Keep the batch, or raise on the ``fail_at``-th one."""
        if len(self.batches) == self.fail_at:
            raise RuntimeError("boom")
        self.batches.append(batch)


def hook_batches(sizes, d_in=16, seed=0) -> list[HookActivations]:
    """Random activation batches of ``sizes`` rows, each row at position 2."""
    generator = torch.Generator().manual_seed(seed)
    return [
        HookActivations(
            sae_in=torch.randn(n, d_in, generator=generator),
            token_context=torch.randint(0, 40, (n, 3), generator=generator),
            positions=torch.stack([torch.arange(n), torch.full((n,), 2)], dim=1),
        )
        for n in sizes
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_analysis_gets_each_batch_encoded_by_the_sae(dtype):
    sae = make_sae().to(dtype)
    data = hook_batches([5, 7, 3])
    first, second = Recorder(), Recorder()
    total = run_shared_pass(sae, [first, second], data, hook_name=TINY_HOOK)
    assert total == 15
    assert [b.offset for b in first.batches] == [0, 5, 12]
    assert [b.n for b in first.batches] == [5, 7, 3]
    for ours, theirs, hook in zip(first.batches, second.batches, data, strict=True):
        assert ours is theirs  # encoded once, shared
        sae_in = hook.sae_in.to(dtype)
        assert ours.sae_in.dtype == dtype
        torch.testing.assert_close(ours.sae_in, sae_in)
        with torch.no_grad():
            torch.testing.assert_close(ours.feature_acts, sae.encode(sae_in))
            torch.testing.assert_close(ours.sae_out, sae(sae_in))
        assert ours.tokens.tolist() == hook.token_context[:, 2].tolist()
        assert torch.equal(ours.positions, hook.positions)


def test_a_failing_analysis_is_handed_over_dropped_and_the_pass_stops_without_any():
    sae = make_sae()
    data = hook_batches([5, 7, 3])
    failing, healthy = Recorder(fail_at=1), Recorder()
    failures = []
    total = run_shared_pass(
        sae,
        [failing, healthy],
        data,
        hook_name=TINY_HOOK,
        on_error=lambda analysis, exc: failures.append((analysis, str(exc))),
    )
    assert failures == [(failing, "boom")]
    assert (len(failing.batches), len(healthy.batches), total) == (1, 3, 15)

    consumed = []

    def source():
        for batch in data:
            consumed.append(batch)
            yield batch

    alone = Recorder(fail_at=1)
    total = run_shared_pass(
        sae, [alone], source(), hook_name=TINY_HOOK, on_error=lambda *_: None
    )
    assert (total, len(consumed)) == (12, 2)  # stopped once none was left
    with pytest.raises(RuntimeError, match="boom"):
        run_shared_pass(sae, [Recorder(fail_at=0)], data, hook_name=TINY_HOOK)


def test_bad_batches_are_named():
    sae = make_sae()
    with pytest.raises(ActivationError, match="gave no tokens"):
        run_shared_pass(sae, [Recorder()], [], hook_name=TINY_HOOK)
    narrow = hook_batches([4], d_in=8)
    with pytest.raises(ActivationError, match=r"width 8, but the SAE expects d_in=16"):
        run_shared_pass(sae, [Recorder()], narrow, hook_name=TINY_HOOK)
    data = hook_batches([5, 7])
    data[1].sae_in[[2, 4, 6], 3] = float("nan")
    data[1].sae_in[4, 0] = float("inf")  # 3 bad rows, 2 bad columns
    message = r"^batch 1 \(rows 5-11\): 3 activation rows at 'blocks.0.hook_resid_post'"
    with pytest.raises(ActivationError, match=message):
        run_shared_pass(sae, [Recorder()], data, hook_name=TINY_HOOK)
