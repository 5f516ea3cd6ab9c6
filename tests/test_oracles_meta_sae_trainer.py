"""The meta-SAE trainer's schedule, step and threshold against independent references.

The references are written from the formulas in ``trainer.py``'s docstring:
a float64 brute-force sort for the global threshold, autograd plus
``torch.optim.Adam`` (the unfused implementation) for a training step, and
the piecewise-linear schedule for the learning rate.
"""

from __future__ import annotations

import pytest
import torch
from sae_lens_ext_meta_sae import MetaSAEConfig, MetaSAETrainer, planted_decoder
from sae_lens_ext_meta_sae.trainer import MetaSAEWeights, global_threshold, reconstruct


def trainer_for(steps: int, fraction: float) -> MetaSAETrainer:
    """A small trainer whose schedule is ``steps`` long with ``fraction`` decaying."""
    config = MetaSAEConfig(
        d_meta=4, k=1, steps=steps, lr=1e-3, lr_decay_fraction=fraction, seed=0
    )
    return MetaSAETrainer(torch.randn(16, 6), 4, config)


@pytest.mark.parametrize(
    ("fraction", "expected"),
    [
        # constant 1e-3 for the first 80 steps, then linear to 0 at step 100
        (0.2, {0: 1e-3, 79: 1e-3, 80: 1e-3, 90: 5e-4, 95: 2.5e-4, 99: 5e-5}),
        (0.0, {0: 1e-3, 50: 1e-3, 99: 1e-3}),  # no decay
        (1.0, {0: 1e-3, 25: 7.5e-4, 50: 5e-4, 99: 1e-5}),  # decay from the start
    ],
)
def test_learning_rate_schedule_is_constant_then_linear_to_zero(fraction, expected):
    trainer = trainer_for(100, fraction)
    for step, lr in expected.items():
        assert trainer._lr(step) == pytest.approx(lr, rel=1e-12, abs=1e-15)


def brute_force_threshold(weights: MetaSAEWeights, data: torch.Tensor, k: float):
    """Midpoint between the ``round(k n)``-th and next positive pre-activation (float64)."""
    pre = (data.double() - weights.b_dec.double()) @ weights.W_enc.double()
    pre = pre + weights.b_enc.double()
    positive = sorted((v for v in pre.flatten().tolist() if v > 0), reverse=True)
    n_keep = max(1, round(k * data.shape[0]))
    if len(positive) <= n_keep:
        return 0.0
    return (positive[n_keep - 1] + positive[n_keep]) / 2


def random_weights(d: int, d_meta: int, bias: float, seed: int) -> MetaSAEWeights:
    """Random encoder weights with encoder bias ``bias``."""
    generator = torch.Generator().manual_seed(seed)
    return MetaSAEWeights(
        W_enc=torch.randn(d, d_meta, generator=generator),
        b_enc=torch.full((d_meta,), bias),
        W_dec=torch.randn(d_meta, d, generator=generator),
        b_dec=0.1 * torch.randn(d, generator=generator),
    )


@pytest.mark.parametrize(
    ("k", "bias"),
    [
        (2.0, 0.0),  # 5000 rows: more than one 4096-row encoder chunk
        (0.3, 0.0),  # k n = 1500
        (1.5, -6.0),  # few positives (~50): fewer than k n, threshold 0
    ],
)
def test_global_threshold_equals_a_brute_force_sort(k, bias):
    data = torch.randn(5000, 5, generator=torch.Generator().manual_seed(7))
    weights = random_weights(5, 3, bias, seed=8)
    expected = brute_force_threshold(weights, data, k)
    if bias < 0:
        assert expected == 0.0
    ours = global_threshold(weights, data, k)
    # float32 pre-activations against float64: ~1e-6 relative.
    assert ours == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("threshold", [0.0, 0.7])
def test_reconstruction_is_the_dense_jumprelu_decode(threshold):
    # 5000 rows: more than one encoder chunk
    data = torch.randn(5000, 5, generator=torch.Generator().manual_seed(9)).double()
    weights = random_weights(5, 3, -0.2, seed=10)
    weights = MetaSAEWeights(
        **{
            name: getattr(weights, name).double()
            for name in ("W_enc", "b_enc", "W_dec", "b_dec")
        },
        threshold=threshold,
    )
    pre = (data - weights.b_dec) @ weights.W_enc + weights.b_enc
    acts = torch.where(pre > max(threshold, 0.0), pre, torch.zeros_like(pre))
    expected = acts @ weights.W_dec + weights.b_dec
    torch.testing.assert_close(
        reconstruct(weights, data).double(), expected, rtol=1e-5, atol=1e-5
    )


def reference_step(params, optimizer, x, n_keep):
    """One step written from the docstring: autograd loss, tangent decoder gradient,
    ``torch.optim.Adam`` update, decoder rows renormalised."""
    W_enc_T, b_enc, W_dec, b_dec = params
    pre = (x - b_dec) @ W_enc_T.T + b_enc
    kept = torch.zeros(pre.numel(), dtype=torch.bool)
    kept[torch.topk(pre.detach().relu().flatten(), n_keep).indices] = True
    x_hat = (pre * kept.view_as(pre)) @ W_dec + b_dec
    loss = (x_hat - x).pow(2).sum(1).mean()
    optimizer.zero_grad()
    loss.backward()
    with torch.no_grad():
        W_dec.grad -= (W_dec.grad * W_dec).sum(1, keepdim=True) * W_dec
        optimizer.step()
        W_dec /= W_dec.norm(dim=1, keepdim=True)
    return float(loss.detach())


def check_three_steps(trainer, data, reference):
    """Three trainer steps equal ``reference`` steps on a copy of its parameters
    with ``torch.optim.Adam`` (the moments carry over from step to step)."""
    params = [p.detach().clone().requires_grad_() for p in trainer.params]
    optimizer = torch.optim.Adam(params, lr=1e-2, foreach=False, fused=False)
    for start in range(0, 192, 64):
        x = data[start : start + 64]
        loss = trainer.step(x)
        expected = reference(params, optimizer, x, trainer.n_keep)
        assert loss == pytest.approx(expected, rel=1e-5)
        for ours, reference_param in zip(trainer.params, params, strict=True):
            torch.testing.assert_close(
                ours, reference_param.detach(), rtol=1e-4, atol=1e-5
            )


def test_training_steps_equal_autograd_and_torch_adam():
    data = planted_decoder(256, 12, 10, seed=3).decoder
    config = MetaSAEConfig(d_meta=10, k=2, batch_size=64, lr=1e-2, autocast=False)
    trainer = MetaSAETrainer(data, 10, config)
    check_three_steps(trainer, data, reference_step)
    norms = trainer.W_dec.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    # the cut-off tracked for the next batch's hint and the threshold average
    assert trainer.last_cutoff > 0
    assert 0 < trainer.threshold_ema < trainer.last_cutoff


def reference_rescaled_step(params, optimizer, x, n_keep):
    """One step with ``decoder_norm="rescaled"`` (SAE-Lens's rescale_acts_by_decoder_norm):
    activations scaled by each decoder row's norm, decoded by the unit rows; the
    gradient is autograd's through the norms, and the rows are not renormalised."""
    W_enc_T, b_enc, W_dec, b_dec = params
    norms = W_dec.norm(dim=1)
    pre = ((x - b_dec) @ W_enc_T.T + b_enc) * norms
    kept = torch.zeros(pre.numel(), dtype=torch.bool)
    kept[torch.topk(pre.detach().relu().flatten(), n_keep).indices] = True
    x_hat = (pre * kept.view_as(pre)) @ (W_dec / norms[:, None]) + b_dec
    loss = (x_hat - x).pow(2).sum(1).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def test_rescaled_training_steps_equal_autograd_and_torch_adam():
    data = planted_decoder(256, 12, 10, seed=4).decoder
    config = MetaSAEConfig(
        d_meta=10,
        k=2,
        batch_size=64,
        lr=1e-2,
        autocast=False,
        decoder_norm="rescaled",
    )
    trainer = MetaSAETrainer(data, 10, config)
    with torch.no_grad():  # rows of unequal norms, so each one's scale matters
        trainer.W_dec.mul_(torch.linspace(0.5, 2.0, 10)[:, None])
    check_three_steps(trainer, data, reference_rescaled_step)
    norms = trainer.W_dec.norm(dim=1)
    assert not torch.allclose(norms, torch.ones_like(norms))  # never renormalised


def test_autocast_step_makes_the_bfloat16_batch_itself_when_not_given():
    data = planted_decoder(128, 12, 10, seed=5).decoder
    config = MetaSAEConfig(d_meta=10, k=2, batch_size=64, lr=1e-2, autocast=True)
    given, made = MetaSAETrainer(data, 10, config), MetaSAETrainer(data, 10, config)
    x = data[:64]
    assert given.step(x, x.to(torch.bfloat16)) == made.step(x)
    for a, b in zip(given.params, made.params, strict=True):
        assert torch.equal(a, b)
