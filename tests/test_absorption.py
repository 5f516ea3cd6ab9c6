"""Absorption plugin: streaming top-N, SAEBench scoring, planted hierarchies."""

from __future__ import annotations

import importlib
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import make_sae
from sae_lens_ext_absorption import absorption_report
from sae_lens_ext_absorption.config import AbsorptionConfig
from sae_lens_ext_absorption.discrepancy import DiscrepancyAccumulator
from sae_lens_ext_absorption.letters import LetterSampler, first_letter
from sae_lens_ext_absorption.probes import (
    _BalancedBCE,
    balanced_bce,
    fit_probes,
    fit_sparse_probes,
)
from sae_lens_ext_absorption.report import AbsorptionAccumulator
from sae_lens_ext_absorption.row_store import RowStore, lookup, top_entries
from sae_lens_ext_absorption.scoring import absorption_scores
from sae_lens_ext_absorption.synthetic import (
    WordTokenizer,
    planted_hierarchy,
    planted_letters,
)
from sae_lens_ext_absorption.topk import StreamingTopK

from sae_lens_ext import run

# the module (the package exports a function of the same name)
first_letter_module = importlib.import_module("sae_lens_ext_absorption.first_letter")

pytestmark = pytest.mark.usefixtures("one_thread")


def test_streaming_topk_equals_exact_topk():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(3000, 40, generator=generator)
    scores[:, :5] *= (torch.rand(3000, 5, generator=generator) < 0.02).float()
    payload = torch.randn(3000, 40, generator=generator)
    top = StreamingTopK(40, 7)
    offset = 0
    for chunk, extra in zip(scores.split(256), payload.split(256), strict=True):
        top.update_dense(chunk.T, offset, payload=extra.T, floor=0.0)
        offset += len(chunk)
    exact = scores.clamp_min(0).T.topk(7, dim=1)
    positive = exact.values > 0
    torch.testing.assert_close(top.values[positive], exact.values[positive])
    assert torch.equal(top.ids[positive], exact.indices[positive])
    assert (top.ids[~positive] == -1).all()
    expected_payload = payload.T.gather(1, exact.indices)
    torch.testing.assert_close(top.payload[positive], expected_payload[positive])


def test_streaming_topk_on_mostly_silent_columns_equals_exact_topk(monkeypatch):
    # every column scores in the first chunk (the dense path), later only 30
    # of 400 do, fewer and fewer beating their lists (the column-subset path)
    generator = torch.Generator().manual_seed(5)
    scores = torch.full((4000, 400), -10.0)
    scores[:250] = torch.randn(250, 400, generator=generator)
    distinct = torch.randperm(3750 * 30, generator=generator).float() / 3750 / 30
    scores[250:, :30] = distinct.view(3750, 30) * 4  # no ties
    paths = []
    for name in ("_merge_dense", "update_entries"):
        original = getattr(StreamingTopK, name)

        def spy(self, *args, _original=original, _name=name, **kwargs):
            paths.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(StreamingTopK, name, spy)
    top = StreamingTopK(400, 5)
    for start in range(0, 4000, 250):
        top.update_dense(scores[start : start + 250].T, start)
    exact = scores.T.topk(5, dim=1)
    torch.testing.assert_close(top.values, exact.values)
    assert torch.equal(top.ids, exact.indices)
    assert {"_merge_dense", "update_entries"} <= set(paths)


def test_row_store_keeps_every_referenced_row_after_pruning():
    generator = torch.Generator().manual_seed(1)
    acts = torch.relu(torch.randn(5000, 30, generator=generator) - 1.0)
    top = StreamingTopK(30, 4)
    store = RowStore(n_codes=6, n_context=1)
    store._next_prune = 200
    for start in range(0, 5000, 500):
        chunk = acts[start : start + 500]
        top.update_dense(chunk.T, start, floor=0.0)
        entered = top.ids[top.ids >= start].unique()
        slot_of_row = torch.full((len(chunk),), -1)
        slot_of_row[entered - start] = torch.arange(len(entered))
        rows, latents = chunk.nonzero(as_tuple=True)
        store.add_entries(
            entered, slot_of_row[rows], latents, chunk[rows, latents], None, None
        )
        store.maybe_prune(top.live_ids)
    rows = store.rows()
    live = top.live_ids()
    where, found = lookup(rows, live)
    assert found.all()
    assert rows.ids.numel() <= 2 * top.ids.numel()
    expected = acts[live].topk(6, dim=1)
    torch.testing.assert_close(rows.code_values[where], expected.values.clamp_min(0))
    firing = expected.values > 0
    assert torch.equal(
        rows.code_latents[where][firing], expected.indices[firing].to(torch.int32)
    )
    assert (rows.code_latents[where][~firing] == -1).all()


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
    accumulator = DiscrepancyAccumulator(make_sae(), AbsorptionConfig())
    with pytest.raises(ValueError, match="no rows"):
        accumulator.result()


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        (" Apple", 0),
        ("zeta", 25),
        ("\u2581Queen", 16),
        (" 123", -1),
        (",", -1),
        ("", -1),
    ],
)
def test_first_letter_labels_only_alphabetic_tokens(text, letter):
    assert first_letter(text) == letter


def test_letter_sampler_caps_occurrences_per_token():
    tokenizer = WordTokenizer([" apple", " bee", " 42"])
    sampler = LetterSampler(tokenizer, max_rows=100, rows_per_token=3, n_codes=2)
    tokens = torch.tensor([0, 0, 1, 2, 0, 0, 1, 1, 1, 1])
    for chunk in tokens.split(4):
        sampler.update(chunk, torch.randn(len(chunk), 5), torch.rand(len(chunk), 6))
    kept = sampler.rows()
    assert kept.tokens.bincount(minlength=3).tolist() == [3, 3, 0]
    assert kept.letters.tolist() == [0 if t == 0 else 1 for t in kept.tokens.tolist()]


def letter_report(planted, **options):
    """The absorption report of a planted first-letter setup."""
    accumulator = AbsorptionAccumulator(
        planted.sae,
        AbsorptionConfig(top_n=8, test_fraction=0.25, **options),
        tokenizer=planted.tokenizer,
    )
    with torch.no_grad():
        acts = planted.sae.encode(planted.sae_in)
    accumulator.update(
        SimpleNamespace(
            sae_in=planted.sae_in, feature_acts=acts, offset=0, tokens=planted.tokens
        )
    )
    return accumulator.result(seed=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_first_letter_rate_equals_planted_absorption(seed):
    planted = planted_letters(seed=seed)
    result = letter_report(planted).first_letter
    rows = result.rows.assign(absorbed=result.rows["token"].isin(planted.absorbed))
    expected = rows.groupby("letter")["absorbed"].mean()
    assert expected.max() > 0.2  # some absorbed words are in the test split
    table = result.letters.set_index("letter")
    for letter, rate in expected.items():
        assert table.loc[letter, "probe_f1"] == 1.0
        assert table.loc[letter, "main_latents"] == str(planted.letter_latents[letter])
        assert table.loc[letter, "absorption_rate"] == pytest.approx(rate)
        absorbers = table.loc[letter, "absorbing_latents"]
        n_letters = len(planted.letter_latents)
        for latent in filter(None, absorbers.split(", ")):
            assert int(latent) - n_letters in planted.absorbed
    assert result.metrics["letters_evaluated"] == len(expected)


def planted_rows(planted):
    """The planted setup's rows as the letter sampler keeps them."""
    sampler = LetterSampler(
        planted.tokenizer, max_rows=100_000, rows_per_token=100, n_codes=32
    )
    with torch.no_grad():
        acts = planted.sae.encode(planted.sae_in)
    sampler.update(planted.tokens, planted.sae_in, acts)
    return sampler.rows()


def test_first_letter_takes_a_given_split():
    planted = planted_letters()
    rows = planted_rows(planted)
    config = AbsorptionConfig(test_fraction=0.25)
    default = first_letter_module.first_letter_absorption(rows, planted.sae, config)
    same = first_letter_module.first_letter_absorption(
        rows,
        planted.sae,
        config,
        split=first_letter_module._split_by_token(rows.tokens, 0.25, 0),
    )
    assert default.letters.equals(same.letters)
    # a split of its own: only its test rows are scored and counted
    distinct = rows.tokens.unique()
    held = distinct[1::2]
    is_test = torch.isin(rows.tokens, held)
    result = first_letter_module.first_letter_absorption(
        rows,
        planted.sae,
        config,
        split=((~is_test).nonzero()[:, 0], is_test.nonzero()[:, 0]),
    )
    assert set(result.rows["token"]) <= set(held.tolist())
    counts = result.letters.set_index("letter")["n_test"]
    for letter, count in counts.items():
        index = "abcdefghijklmnopqrstuvwxyz".index(letter)
        assert count == int((is_test & (rows.letters == index)).sum())


def test_first_letter_without_absorption_scores_zero():
    planted = planted_letters(absorbed_per_letter=0)
    result = letter_report(planted).first_letter
    assert result.metrics["mean_absorption_rate"] == 0.0
    assert result.metrics["mean_absorption_fraction"] == 0.0


def test_first_letter_needs_no_scikit_learn(monkeypatch):
    # the L1 ranking has its own solver (tests/test_absorption_l1.py)
    planted = planted_letters()
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.linear_model", None)
    result = letter_report(planted).first_letter
    assert result.metrics["letters_evaluated"] > 0


def test_report_on_plain_activations_skips_letters_with_a_note():
    planted = planted_hierarchy(seed=0, steps=20)
    x, _ = planted.sample(3000)
    report = absorption_report(planted.sae, x, top_n=8)
    assert report.first_letter is None
    assert "no tokenizer" in report.letters_note
    assert report.metrics["n_rows"] == 3000
    assert set(report.plots()) == {"overlap_histogram"}
    assert "suspected absorbed latents" in report.card()


def test_report_rejects_token_ids_without_a_model():
    planted = planted_hierarchy(seed=0, steps=1)
    with pytest.raises(ValueError, match="model="):
        absorption_report(planted.sae, torch.zeros(2, 8, dtype=torch.long))


def test_absorption_analysis_in_a_run(tiny_model, tiny_tokens, tmp_path):
    output = run(
        sae=make_sae(),
        model=tiny_model,
        dataset=tiny_tokens,
        plugins=["absorption"],
        config={"absorption": {"top_n": 4}},
        out_dir=tmp_path / "run",
        n_tokens=500,
    )
    metrics = output.summary["analyses"]["absorption"]["metrics"]
    assert metrics["n_rows"] > 0 and 0 <= metrics["mean_overlap"] <= 1
    folder = output.run_dir / "absorption"
    for name in ("latents.parquet", "suspects.parquet", "overlap_histogram.png"):
        assert (folder / name).is_file()
    card = (output.run_dir / "README.md").read_text()
    assert "Feature absorption" in card and "First-letter absorption skipped" in card


def test_card_and_plots_report_the_letters():
    report = letter_report(planted_letters())
    card = report.card()
    rate = report.first_letter.metrics["mean_absorption_rate"]
    assert f"mean absorption rate **{rate:.3f}**" in card
    assert set(report.plots()) == {"overlap_histogram", "letter_absorption"}
    assert {"letters", "letter_rows", "suspects"} <= set(report.tables)


def test_one_thread_is_restored_after_the_report():
    torch.set_num_threads(2)
    letter_report(planted_letters())
    assert torch.get_num_threads() == 2


def test_report_from_token_ids_runs_the_model(tiny_model, tiny_tokens):
    report = absorption_report(make_sae(), tiny_tokens, model=tiny_model, top_n=4)
    assert report.metrics["n_rows"] == tiny_tokens.shape[0] * (tiny_tokens.shape[1] - 1)
    assert report.first_letter is None and "no tokenizer" in report.letters_note


@pytest.mark.parametrize("width", [4, 12])
def test_top_entries_match_dense_topk(width):
    # width 12 >= every row's count: entries placed as nonzero gives them;
    # width 4: the 4 largest searched per row
    generator = torch.Generator().manual_seed(2)
    acts = torch.relu(torch.randn(50, 12, generator=generator))
    rows, latents = acts.nonzero(as_tuple=True)
    kept = torch.tensor([3, 7, 8, 20, 49])
    slot_of_row = torch.full((50,), -1)
    slot_of_row[kept] = torch.arange(len(kept))
    codes, values = top_entries(
        len(kept), slot_of_row[rows], latents, acts[rows, latents], width
    )
    expected = acts[kept].topk(width, dim=1)
    order = values.argsort(dim=1, descending=True, stable=True)
    torch.testing.assert_close(values.gather(1, order), expected.values)
    firing = expected.values > 0
    sorted_codes = codes.gather(1, order)
    assert torch.equal(sorted_codes[firing], expected.indices[firing].to(torch.int32))
    assert (sorted_codes[~firing] == -1).all()


def test_hand_written_probe_gradient_matches_autograd():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(40, 3, generator=generator)
    labels = torch.rand(40, 3, generator=generator) < 0.2
    logits.requires_grad_(True)
    expected = balanced_bce(logits, labels)
    expected.backward()
    objective = _BalancedBCE(labels)
    loss, grad = objective(logits.detach().T)
    torch.testing.assert_close(loss, expected.detach())
    torch.testing.assert_close(grad.T, logits.grad)


def test_whitened_probe_fit_reaches_the_plain_objectives_optimum():
    # anisotropic inputs (feature scales 0.01..10): the fit runs in whitened
    # coordinates, but must minimise balanced BCE + l2 ||w||^2 of the plain
    # (centred, overall-scaled) inputs: its gradient there vanishes
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(600, 6, generator=generator) * torch.logspace(-2, 1, 6)
    labels = torch.stack([x[:, 0] > 0.005, x[:, 5] + x[:, 1] * 300 > 2], 1)
    probes = fit_probes(x, labels, max_iter=60)
    mean = x.mean(0)
    scale = (x - mean).pow(2).mean().sqrt()
    weight = (probes.weight * scale).requires_grad_(True)
    bias = (probes.bias + (mean / scale) @ weight.T).detach().requires_grad_(True)
    loss = balanced_bce((x - mean) / scale @ weight.T + bias, labels)
    (loss + 1e-3 * weight.pow(2).sum()).backward()
    assert weight.grad.abs().max() < 1e-4
    assert bias.grad.abs().max() < 1e-4


def test_sparse_probe_fit_reaches_the_full_objectives_optimum():
    # rows where none of a probe's features fire are merged into one row;
    # the optimum must still be that of the plain objective over all rows
    generator = torch.Generator().manual_seed(6)
    fires = torch.rand(3, 800, 4, generator=generator) < 0.08
    x = torch.where(fires, torch.rand(3, 800, 4, generator=generator) * 5, 0.0)
    labels = (x[:, :, 0] + x[:, :, 1] > 2).T | (
        torch.rand(800, 3, generator=generator) < 0.05
    )
    probes = fit_sparse_probes(x, labels)
    mean = x.mean(1, keepdim=True)
    scale = (x - mean).pow(2).mean((1, 2), keepdim=True).sqrt()
    z = ((x - mean) / scale).double()
    weight = (probes.weight.double() * scale[:, 0]).requires_grad_(True)
    bias = probes.bias.double() + (mean[:, 0] * probes.weight).sum(1)
    bias = bias.detach().requires_grad_(True)
    logits = torch.einsum("pnf,pf->np", z, weight) + bias
    loss = balanced_bce(logits, labels) + 1e-3 * weight.pow(2).sum()
    loss.backward()
    assert weight.grad.abs().max() < 1e-5
    assert bias.grad.abs().max() < 1e-5
    assert (probes.weight[:, :2] > 0).all()  # the label's features
