"""Probes trained the way SAEBench trains them (``probe_training="saebench"``)."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
from sae_lens_ext_absorption.config import AbsorptionConfig
from sae_lens_ext_absorption.letters import LetterSampler
from sae_lens_ext_absorption.saebench_probes import (
    AdamSchedule,
    DenseInputs,
    SlotInputs,
    fit_sklearn_sparse_probes,
    saebench_ranking,
    train_adam_probes,
)
from sae_lens_ext_absorption.synthetic import planted_letters

from sae_lens_ext.presets import preset_config, preset_overrides

first_letter_module = importlib.import_module("sae_lens_ext_absorption.first_letter")

pytestmark = pytest.mark.usefixtures("one_thread")


def separable_problem(seed: int, n: int = 600, f: int = 10, p: int = 3):
    """Gaussian inputs with an offset; each label is the side of a planted
    hyperplane, rows within 0.5 of it dropped (separable, known normals)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(4 * n, f, generator=generator) + 2.0
    truth = torch.randn(p, f, generator=generator)
    truth = truth / truth.norm(dim=1, keepdim=True)
    margin = (x - 2.0) @ truth.T - 0.8  # positives are the minority
    keep = (margin.abs() > 0.5).all(1).nonzero()[:, 0][:n]
    return x[keep], margin[keep] > 0, truth


def lbfgs_minimum(weight_shape, bias_shape, loss_of):
    """Brute force: ``loss_of(weight, bias)`` minimised from zero by float64
    LBFGS to tight tolerances."""
    weight = torch.zeros(weight_shape, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(bias_shape, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        max_iter=5000,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        line_search_fn="strong_wolfe",
    )

    def closure():
        optimizer.zero_grad()
        loss = loss_of(weight, bias)
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def reference_optimum(x, labels, weight_decay, n_outputs):
    """SAEBench's probe objective at its optimum: mean positive-weighted BCE
    over rows and ``n_outputs`` outputs, plus Adam's coupled weight decay as
    ``weight_decay / 2 x`` the squared parameters."""
    x, y = x.double(), labels.double()
    pos_weight = (len(y) - y.sum(0)) / y.sum(0)

    def loss(weight, bias):
        bce = F.binary_cross_entropy_with_logits(
            x @ weight.T + bias, y, pos_weight=pos_weight, reduction="sum"
        )
        decay = weight.pow(2).sum() + bias.pow(2).sum()
        return bce / (len(y) * n_outputs) + weight_decay / 2 * decay

    return lbfgs_minimum((y.shape[1], x.shape[1]), (y.shape[1],), loss)


def test_adam_probe_reaches_the_regularised_optimum_and_the_planted_direction():
    x, labels, truth = separable_problem(0)
    schedule = AdamSchedule(
        epochs=200, batch_size=64, lr=1e-2, end_lr=1e-5, weight_decay=1e-2
    )
    generator = torch.Generator().manual_seed(0)
    probes = train_adam_probes(DenseInputs(x), labels, schedule, generator)
    weight, bias = reference_optimum(x, labels, schedule.weight_decay, 26)
    cosine = F.cosine_similarity(probes.weight.double(), weight, dim=1)
    assert cosine.min() > 0.999
    torch.testing.assert_close(probes.bias.double(), bias, atol=0.05, rtol=0.02)
    # it classifies as the optimum does, and lies as close to the planted
    # normals (the decay keeps the optimum itself from separating fully)
    ours, best = probes.logits(x) > 0, (x.double() @ weight.T + bias) > 0
    assert (ours == best).float().mean() > 0.99
    accuracy = (ours == labels).float().mean(0)
    assert (accuracy > 0.9).all()
    assert torch.allclose(accuracy, (best == labels).float().mean(0), atol=0.01)
    to_truth = F.cosine_similarity(probes.weight, truth, dim=1)
    assert (to_truth > 0.85).all()
    assert torch.allclose(
        to_truth, F.cosine_similarity(weight.float(), truth, dim=1), atol=0.01
    )


def test_adam_probe_averages_its_loss_over_saebench_outputs():
    # SAEBench averages the loss over its 26 outputs; Adam is blind to the
    # gradient's scale, so 3 probes of a 26-output mean with decay wd train
    # exactly as a 3-output mean with decay wd x 26 / 3 (up to Adam's eps)
    x, labels, _ = separable_problem(1, n=300)
    runs = []
    for n_outputs, weight_decay in ((26, 3e-2), (3, 3e-2 * 26 / 3)):
        schedule = AdamSchedule(
            epochs=20, batch_size=64, lr=1e-2, end_lr=1e-5, weight_decay=weight_decay
        )
        generator = torch.Generator().manual_seed(1)
        runs.append(
            train_adam_probes(
                DenseInputs(x), labels, schedule, generator, n_outputs=n_outputs
            )
        )
    torch.testing.assert_close(runs[0].weight, runs[1].weight, atol=1e-4, rtol=1e-3)
    assert not torch.allclose(  # and the scaling matters
        runs[0].weight,
        train_adam_probes(
            DenseInputs(x),
            labels,
            AdamSchedule(20, 64, 1e-2, 1e-5, 3e-2),
            torch.Generator().manual_seed(1),
            n_outputs=3,
        ).weight,
        atol=1e-2,
    )


def random_slots(seed: int, n: int = 300, slots: int = 5, d: int = 40):
    """Sparse codes as slot ids (some empty, ``-1``) and positive values."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.stack(
        [torch.randperm(d, generator=generator)[:slots] for _ in range(n)]
    )
    values = torch.rand(n, slots, generator=generator) + 0.1
    empty = torch.rand(n, slots, generator=generator) < 0.3
    ids = torch.where(empty, -1, ids)
    dense = torch.zeros(n, d + 1)
    dense.scatter_(1, torch.where(empty, d, ids), torch.where(empty, 0.0, values))
    return ids, values, dense[:, :d]


def test_slot_inputs_equal_dense_inputs():
    ids, values, dense = random_slots(0)
    rows = torch.tensor([3, 0, 299, 17, 17])
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(4, dense.shape[1], generator=generator)
    bias = torch.randn(4, generator=generator)
    grad = torch.randn(len(rows), 4, generator=generator)
    slot, full = SlotInputs(ids, values, dense.shape[1]), DenseInputs(dense)
    torch.testing.assert_close(
        slot.logits(rows, weight, bias), full.logits(rows, weight, bias)
    )
    torch.testing.assert_close(
        slot.weight_grad(rows, grad), full.weight_grad(rows, grad)
    )


def test_l1_ranking_puts_the_planted_latent_first():
    # latent j fires on every row of class j, and on 5% of other rows in
    # place of their own; latents 3..59 fire at random on every class
    n = 2000
    ids, values, _ = random_slots(2, n=n, slots=4, d=57)
    generator = torch.Generator().manual_seed(3)
    classes = torch.randint(0, 3, (n,), generator=generator)
    stray = torch.rand(n, generator=generator) < 0.05
    other = (classes + torch.randint(1, 3, (n,), generator=generator)) % 3
    planted = torch.where(stray, other, classes)
    ids = torch.cat([torch.where(ids >= 0, ids + 3, -1), planted[:, None]], 1)
    values = torch.cat([values, torch.ones(n, 1)], 1)
    labels = F.one_hot(classes, 3).bool()
    ranked = saebench_ranking(
        SlotInputs(ids, values, 60), labels, 3, 300, torch.Generator().manual_seed(4)
    )
    assert ranked[:, 0].tolist() == [0, 1, 2]


def brute_force_balanced_logistic(x, labels):
    """scikit-learn's ``LogisticRegression(C=1, class_weight="balanced")``
    objective at its optimum (bias unpenalised)."""
    x, y = x.double(), labels.double()
    n = len(y)
    class_weight = torch.where(
        labels, n / (2 * y.sum()), n / (2 * (n - y.sum()))
    ).double()

    def loss(weight, bias):
        losses = F.binary_cross_entropy_with_logits(
            x @ weight + bias, y, reduction="none"
        )
        return (class_weight * losses).sum() + 0.5 * weight.pow(2).sum()

    return lbfgs_minimum((x.shape[1],), (), loss)


def test_sklearn_sparse_probes_equal_the_brute_force_optimum():
    _, _, dense = random_slots(5, n=400, slots=3, d=8)
    generator = torch.Generator().manual_seed(6)
    labels = (dense[:, :4] @ torch.tensor([2.0, -1.0, 0.5, 0.0]) > 0.3) ^ (
        torch.rand(400, generator=generator) < 0.1
    )
    labels = torch.stack([labels, dense[:, 5] > 0], 1)
    chosen = torch.tensor([[0, 1, 2, 3], [5, 6, 7, 0]])
    x = dense[:, chosen].permute(1, 0, 2)  # [p, n, k]
    probes = fit_sklearn_sparse_probes(x, labels)
    for j in range(2):
        weight, bias = brute_force_balanced_logistic(x[j], labels[:, j])
        torch.testing.assert_close(
            probes.weight[j].double(), weight, atol=2e-4, rtol=1e-4
        )
        torch.testing.assert_close(probes.bias[j].double(), bias, atol=2e-4, rtol=1e-4)
    sklearn = pytest.importorskip("sklearn.linear_model")  # the bench extra
    fitted = sklearn.LogisticRegression(
        class_weight="balanced", tol=1e-10, max_iter=10_000
    )
    fitted.fit(x[0].numpy(), labels[:, 0].numpy())
    torch.testing.assert_close(
        probes.weight[0], torch.tensor(fitted.coef_[0]).float(), atol=1e-3, rtol=1e-3
    )


def test_saebench_preset_selects_saebench_probe_training(monkeypatch):
    overrides = preset_overrides("saebench")["absorption"]
    assert overrides["probe_training"] == "saebench"
    assert AbsorptionConfig().probe_training == "exact"  # our default stays
    merged = preset_config("saebench", None, "absorption")["absorption"]
    config = AbsorptionConfig(**merged)
    calls = []
    original = first_letter_module.train_adam_probes

    def spy(inputs, labels, schedule, generator, **kwargs):
        calls.append((type(inputs).__name__, schedule.epochs, schedule.batch_size))
        return original(inputs, labels, schedule, generator, **kwargs)

    monkeypatch.setattr(first_letter_module, "train_adam_probes", spy)
    planted = planted_letters(seed=0)
    sampler = LetterSampler(
        planted.tokenizer, max_rows=100_000, rows_per_token=100, n_codes=32
    )
    with torch.no_grad():
        sampler.update(
            planted.tokens, planted.sae_in, planted.sae.encode(planted.sae_in)
        )
    rows = sampler.rows()
    result = first_letter_module.first_letter_absorption(rows, planted.sae, config)
    assert calls == [("DenseInputs", 50, 64)]  # the ranking is a separate call
    assert result.metrics["mean_probe_f1"] == 1.0
    calls.clear()
    first_letter_module.first_letter_absorption(rows, planted.sae, AbsorptionConfig())
    assert calls == []


def test_probe_training_option_is_checked():
    with pytest.raises(ValueError, match="probe_training"):
        AbsorptionConfig(probe_training="adam")
    with pytest.raises(ValueError, match="sparse_probe_epochs"):
        AbsorptionConfig(sparse_probe_epochs=0)


def test_saebench_json_carries_the_k_sparse_settings_only_when_trained_so():
    from sae_lens_ext_absorption.saebench import _probe_settings

    assert _probe_settings({"probe_training": "exact"}) == {}
    assert _probe_settings(
        {"probe_training": "saebench", "sparse_probe_epochs": 500}
    ) == {
        "k_sparse_probe_l1_decay": 0.01,
        "k_sparse_probe_batch_size": 4096,
        "k_sparse_probe_num_epochs": 500,
    }
