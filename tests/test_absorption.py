"""Absorption plugin: streaming top-N, SAEBench scoring, planted hierarchies."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from sae_lens_ext_absorption.config import AbsorptionConfig
from sae_lens_ext_absorption.discrepancy import DiscrepancyAccumulator
from sae_lens_ext_absorption.row_store import RowStore, lookup
from sae_lens_ext_absorption.scoring import absorption_scores
from sae_lens_ext_absorption.synthetic import planted_hierarchy
from sae_lens_ext_absorption.topk import StreamingTopK


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread avoids contention on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_streaming_topk_equals_exact_topk():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(3000, 40, generator=generator)
    scores[:, :5] *= (torch.rand(3000, 5, generator=generator) < 0.02).float()
    payload = torch.randn(3000, 40, generator=generator)
    top = StreamingTopK(40, 7)
    offset = 0
    for chunk, extra in zip(scores.split(256), payload.split(256), strict=True):
        top.update_dense(chunk, offset, payload=extra, floor=0.0)
        offset += len(chunk)
    exact = scores.clamp_min(0).T.topk(7, dim=1)
    positive = exact.values > 0
    torch.testing.assert_close(top.values[positive], exact.values[positive])
    assert torch.equal(top.ids[positive], exact.indices[positive])
    assert (top.ids[~positive] == -1).all()
    expected_payload = payload.T.gather(1, exact.indices)
    torch.testing.assert_close(top.payload[positive], expected_payload[positive])


def test_row_store_keeps_every_referenced_row_after_pruning():
    generator = torch.Generator().manual_seed(1)
    acts = torch.relu(torch.randn(5000, 30, generator=generator) - 1.0)
    top = StreamingTopK(30, 4)
    store = RowStore(n_codes=6, n_context=1)
    store._next_prune = 200
    for start in range(0, 5000, 500):
        chunk = acts[start : start + 500]
        top.update_dense(chunk, start, floor=0.0)
        entered = top.ids[top.ids >= start].unique()
        store.add(entered, chunk[entered - start], None, None)
        store.maybe_prune(top.live_ids)
    rows = store.rows()
    live = top.live_ids()
    where, found = lookup(rows, live)
    assert found.all()
    assert rows.ids.numel() <= 2 * top.ids.numel()
    expected = acts[live].topk(6, dim=1).values
    torch.testing.assert_close(rows.code_values[where], expected.clamp_min(0))


def test_scoring_follows_saebench_cases():
    projection = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0])
    main = torch.tensor([1.2, 0.0, 0.5, 0.0, 0.0])
    contributions = torch.tensor(
        [[0.5, 0.0], [0.9, 0.0], [0.3, 0.2], [0.2, 0.1], [0.9, 0.0]]
    )
    cosines = torch.tensor([[0.5, 0.0], [0.5, 0.0], [0.5, 0.5], [0.5, 0.5], [0.05, 0]])
    scores = absorption_scores(
        projection,
        main,
        main > 0,
        contributions,
        cosines,
        share_threshold=0.4,
        cos_threshold=0.1,
    )
    # main carries all; main silent + aligned absorber; partial 0.5/(0.5+0.5);
    # absorbers too small (0.3 < 0.4); absorber not aligned enough for the
    # fraction (cos 0.05 < 0.1) but enough for full absorption (>= 0.025).
    torch.testing.assert_close(scores.fraction, torch.tensor([0, 1.0, 0.5, 0, 0]))
    assert scores.full.tolist() == [False, True, False, False, True]


def stream(sae, x, config, batch_size=4096):
    """Run the discrepancy accumulator over ``x`` in batches."""
    accumulator = DiscrepancyAccumulator(sae, config)
    for start in range(0, len(x), batch_size):
        chunk = x[start : start + batch_size]
        with torch.no_grad():
            acts = sae.encode(chunk)
        accumulator.update(
            SimpleNamespace(sae_in=chunk, feature_acts=acts, offset=start)
        )
    return accumulator.result()


@pytest.mark.parametrize("seed", [0, 1])
def test_planted_parents_are_ranked_first(seed):
    planted = planted_hierarchy(seed=seed)
    assert planted.absorption_of_parents().min() > 0.5  # the SAE really absorbs
    x, _ = planted.sample(20_000, seed=100 + seed)
    result = stream(planted.sae, x, AbsorptionConfig(top_n=32))
    ranked = result.latents.sort_values("absorption_score", ascending=False)
    k = len(planted.parents)
    assert set(ranked["latent"].head(k)) == set(planted.parents)  # precision@k = 1
    suspects = result.suspects[result.suspects["suspected"]]
    assert set(suspects["latent"]) == set(planted.parents)
    table = result.latents.set_index("latent")
    for parent in planted.parents:
        assert table.loc[parent, "top_absorber"] in planted.children[parent]
        assert table.loc[parent, "top_absorber_cos"] > 0.5
    absorbers = result.absorbers[result.absorbers["latent"] == planted.parents[0]]
    assert set(absorbers["absorber"].head(3)) == set(
        planted.children[planted.parents[0]]
    )


def test_no_alarm_without_hierarchy():
    planted = planted_hierarchy(seed=0, hierarchical=False)
    assert planted.absorption_of_parents().max() < 0.05
    x, _ = planted.sample(20_000, seed=100)
    result = stream(planted.sae, x, AbsorptionConfig(top_n=32))
    metrics = result.metrics(flag_threshold=0.25)
    assert metrics["suspected_latents"] == 0
    assert result.latents["absorption_score"].max() < 0.05


def dense_overlap(sae, x, top_n):
    """Overlap of exact encoder and decoder top-N sets, from all rows at once."""
    with torch.no_grad():
        acts = sae.encode(x)
    unit = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
    projections = (x - sae.b_dec) @ unit.T
    encoder = acts.T.topk(top_n, dim=1)
    decoder = projections.T.topk(top_n, dim=1).indices
    overlaps = []
    for i in range(acts.shape[1]):
        encoder_rows = set(encoder.indices[i][encoder.values[i] > 0].tolist())
        overlaps.append(len(encoder_rows & set(decoder[i].tolist())) / top_n)
    return torch.tensor(overlaps)


def test_streamed_overlap_equals_dense_computation():
    from conftest import make_sae

    sae = make_sae(d_in=16, d_sae=48, seed=3)
    x = torch.randn(6000, 16, generator=torch.Generator().manual_seed(3))
    result = stream(sae, x, AbsorptionConfig(top_n=16), batch_size=700)
    expected = dense_overlap(sae, x, 16)
    torch.testing.assert_close(
        torch.tensor(result.latents["overlap"].to_numpy()).float(), expected
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("top_n", 0, "top_n"),
        ("dtype", "float16", "bfloat16"),
        ("test_fraction", 1.0, "test_fraction"),
    ],
)
def test_bad_config_names_the_option(field, value, message):
    with pytest.raises(ValueError, match=message):
        AbsorptionConfig(**{field: value})


def test_empty_stream_is_an_error():
    from conftest import make_sae

    accumulator = DiscrepancyAccumulator(make_sae(), AbsorptionConfig())
    with pytest.raises(ValueError, match="no rows"):
        accumulator.result()
