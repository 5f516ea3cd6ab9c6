"""Meta-SAE plugin: gradients, BatchTopK, planted recovery, SAE-Lens format, errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from conftest import make_sae
from sae_lens import SAE, JumpReLUSAE
from sae_lens_ext_meta_sae import (
    MetaSAEAnalysis,
    MetaSAEConfig,
    MetaSAETrainer,
    decoder_rows,
    decompose,
    mean_max_cosine,
    planted_decoder,
    train_meta_sae,
)
from sae_lens_ext_meta_sae.batchtopk import batch_topk
from sae_lens_ext_meta_sae.trainer import (
    MetaSAEWeights,
    encode_sparse,
)

from sae_lens_ext import ActivationBatch, RunContext, run


def sae_with_decoder(decoder: torch.Tensor) -> SAE:
    """A tiny SAE-Lens SAE whose decoder rows are ``decoder``."""
    sae = make_sae(d_in=decoder.shape[1], d_sae=decoder.shape[0])
    with torch.no_grad():
        sae.W_dec.copy_(decoder)
    return sae


@pytest.fixture(scope="module")
def planted():
    """1536 latents in 48 dimensions built from 64 known directions."""
    return planted_decoder(1536, 48, 64, max_parts=3, noise=0.1, seed=0)


@pytest.fixture(scope="module")
def trained(planted):
    """A meta-SAE trained on the planted decoder (with the SAE it read)."""
    sae = sae_with_decoder(planted.decoder)
    meta = train_meta_sae(
        sae,
        d_meta=64,
        k=2,
        steps=400,
        batch_size=512,
        seed=0,
        release="test-release",
        sae_id="layer0",
        progress=False,
    )
    return sae, meta


def test_paper_ratio_gives_2304_meta_latents_for_49152():
    assert MetaSAEConfig().meta_width(49152) == 2304
    assert MetaSAEConfig().meta_width(1024) == 48
    assert MetaSAEConfig(d_meta=7).meta_width(1024) == 7


@pytest.mark.parametrize("hint", [0.0, 0.5, 1.5, 100.0])
def test_batch_topk_keeps_the_global_top_entries_with_any_hint(hint):
    pre = torch.randn(64, 40, generator=torch.Generator().manual_seed(2))
    selection = batch_topk(pre, 150, hint)
    expected = torch.topk(pre.reshape(-1), 150).indices
    kept = selection.rows * 40 + selection.cols
    assert torch.equal(torch.sort(kept).values, torch.sort(expected).values)
    assert torch.equal(selection.values, pre[selection.rows, selection.cols])
    dense = selection.matrix().to_dense()
    assert int((dense != 0).sum()) == 150


def test_sparse_products_equal_dense_products():
    generator = torch.Generator().manual_seed(3)
    pre = torch.randn(50, 30, generator=generator)
    selection = batch_topk(pre, 120)
    dense = selection.matrix().to_dense()
    right = torch.randn(30, 7, generator=generator)
    left = torch.randn(50, 7, generator=generator)
    other = torch.randn(selection.nnz, generator=generator)
    torch.testing.assert_close(selection.times(right), dense @ right)
    torch.testing.assert_close(selection.transposed_times(left), dense.T @ left)
    reweighted = selection.matrix(other).to_dense()
    torch.testing.assert_close(
        selection.transposed_times(left, other), reweighted.T @ left
    )
    products = (left @ right.T)[selection.rows, selection.cols]
    torch.testing.assert_close(selection.sampled_products(left, right), products)


def test_batch_topk_never_keeps_non_positive_entries():
    pre = -torch.rand(10, 8)
    pre[3, 2] = 0.7
    selection = batch_topk(pre, 20)
    assert selection.nnz == 1 and (int(selection.rows), int(selection.cols)) == (3, 2)


def test_hand_written_gradients_equal_autograd():
    data = planted_decoder(300, 24, 20, seed=1).decoder
    config = MetaSAEConfig(d_meta=20, k=3, batch_size=128, autocast=False, seed=0)
    trainer = MetaSAETrainer(data, 20, config)
    generator = torch.Generator().manual_seed(4)
    trainer.b_enc.copy_(0.1 * torch.randn(20, generator=generator))
    trainer.b_dec.add_(0.1 * torch.randn(24, generator=generator))
    trainer.W_enc_T.mul_(1 + torch.rand(20, 24, generator=generator))
    x = data[:128]
    loss, selection = trainer.gradients(x)

    W_enc_T, b_enc, W_dec, b_dec = (
        p.detach().clone().requires_grad_() for p in trainer.params
    )
    pre = (x - b_dec) @ W_enc_T.T + b_enc
    kept = torch.zeros_like(pre, dtype=torch.bool)
    kept[selection.rows, selection.cols] = True
    expected_kept = torch.topk(pre.detach().relu().reshape(-1), 3 * 128).indices
    assert torch.equal(
        torch.sort(torch.nonzero(kept.reshape(-1)).squeeze(1)).values,
        torch.sort(expected_kept).values,
    )
    x_hat = (pre * kept) @ W_dec + b_dec
    reference = (x_hat - x).pow(2).sum(1).mean()
    reference.backward()
    assert loss == pytest.approx(reference.item(), rel=1e-5)
    radial = (W_dec.grad * W_dec).sum(1, keepdim=True) * W_dec
    expected = [W_enc_T.grad, b_enc.grad, W_dec.grad - radial, b_dec.grad]
    for ours, reference_grad in zip(trainer.params, expected, strict=True):
        torch.testing.assert_close(ours.grad, reference_grad, rtol=1e-4, atol=1e-6)


def test_meta_sae_recovers_planted_directions(planted, trained):
    _, meta = trained
    found = meta.W_dec.detach()
    recovered = mean_max_cosine(planted.directions, found)
    chance = mean_max_cosine(planted.directions, torch.randn(64, 48))
    assert recovered > 0.95
    assert chance < 0.6


def test_training_is_deterministic_for_a_seed(planted):
    sae = sae_with_decoder(planted.decoder[:512])
    kwargs = dict(d_meta=16, k=2, steps=60, batch_size=256, progress=False)
    first = train_meta_sae(sae, seed=5, **kwargs)
    again = train_meta_sae(sae, seed=5, **kwargs)
    other = train_meta_sae(sae, seed=6, **kwargs)
    assert torch.equal(first.W_dec, again.W_dec)
    assert torch.equal(first.threshold, again.threshold)
    assert not torch.equal(first.W_dec, other.W_dec)


def test_threshold_keeps_k_activations_per_latent_on_average(trained):
    sae, meta = trained
    rows = decoder_rows(sae)
    acts = meta.encode(rows)
    assert int((acts > 0).sum()) == 2 * len(rows)


def test_result_is_a_sae_lens_sae_that_round_trips(trained, tmp_path):
    sae, meta = trained
    assert isinstance(meta, JumpReLUSAE)
    meta.save_model(tmp_path)
    metadata = json.loads((tmp_path / "cfg.json").read_text())["metadata"]
    assert metadata["base_release"] == "test-release"
    assert metadata["base_sae_id"] == "layer0"
    assert metadata["base_hook_name"] == "blocks.0.hook_resid_post"
    assert metadata["sae_lens_version"]
    assert "hook_name" not in metadata
    loaded = SAE.load_from_disk(tmp_path)
    assert isinstance(loaded, JumpReLUSAE)
    assert loaded.cfg.metadata.base_d_sae == 1536
    rows = decoder_rows(sae)
    torch.testing.assert_close(loaded.encode(rows), meta.encode(rows))


def test_sae_lens_encoding_matches_ours(trained):
    sae, meta = trained
    rows = decoder_rows(sae)
    theirs = meta.encode(rows)

    weights = MetaSAEWeights(
        meta.W_enc.detach(),
        meta.b_enc.detach(),
        meta.W_dec.detach(),
        meta.b_dec.detach(),
        float(meta.threshold[0].detach()),
    )
    (selection,) = encode_sparse(weights, rows)
    torch.testing.assert_close(selection.matrix().to_dense(), theirs)


def test_decompose_tables_agree_with_a_direct_computation(trained):
    sae, meta = trained
    result = decompose(sae, meta)
    rows = decoder_rows(sae)
    with torch.no_grad():
        acts = meta.encode(rows)
        recon = meta.decode(acts)
    base = result.base_latents
    assert len(base) == 1536 and list(base["base_latent"]) == list(range(1536))
    cosine = torch.nn.functional.cosine_similarity(rows, recon, dim=1)
    torch.testing.assert_close(
        torch.tensor(base["reconstruction_cosine"].to_numpy()), cosine
    )
    latent = 17
    active = torch.nonzero(acts[latent]).squeeze(1)
    weights = acts[latent, active]
    order = torch.argsort(weights, descending=True)
    assert base.loc[latent, "meta_latents"] == active[order].tolist()
    assert base.loc[latent, "weights"] == pytest.approx(weights[order].tolist())

    fvu = float((rows - recon).pow(2).sum() / (rows - rows.mean(0)).pow(2).sum())
    metrics = result.metrics
    assert metrics["fraction_variance_explained"] == pytest.approx(1 - fvu, rel=1e-4)
    assert metrics["fraction_variance_explained"] > 0.9
    assert metrics["mean_active_meta_latents"] == pytest.approx(2.0)
    sizes = (acts > 0).sum(0)
    assert metrics["dead_meta_latents"] == int((sizes == 0).sum())

    table = result.meta_latents
    assert table["n_members"].tolist() == sizes.tolist()
    biggest = table.loc[table["n_members"].idxmax()]
    members = torch.tensor(biggest["members"])
    member_weights = acts[members, int(biggest["meta_latent"])]
    assert (member_weights[:-1] >= member_weights[1:]).all()
    assert biggest["member_weights"] == pytest.approx(member_weights.tolist())
    assert biggest["top_member"] == biggest["members"][0]
    assert isinstance(result.memberships, pd.DataFrame)
    assert len(result.memberships) == int((acts > 0).sum())


@pytest.mark.parametrize("bad", ["zero", "nan"])
def test_broken_decoder_rows_are_rejected(bad):
    sae = make_sae(d_sae=48)
    with torch.no_grad():
        sae.W_dec[5] = 0.0 if bad == "zero" else float("nan")
    message = "zero rows" if bad == "zero" else "NaN"
    with pytest.raises(ValueError, match=message) as error:
        train_meta_sae(sae, d_meta=4, steps=1, progress=False)
    assert "latents 5" in str(error.value)


def test_k_larger_than_d_meta_is_rejected():
    with pytest.raises(ValueError, match="lower k or raise d_meta"):
        train_meta_sae(make_sae(d_sae=48), d_meta=3, k=4, steps=1, progress=False)


def test_d_meta_larger_than_d_sae_is_rejected():
    with pytest.raises(ValueError, match="choose d_meta <= 48"):
        train_meta_sae(make_sae(d_sae=48), d_meta=64, steps=1, progress=False)


def test_unknown_option_is_rejected():
    with pytest.raises(TypeError, match="MetaSAEConfig fields"):
        train_meta_sae(make_sae(d_sae=48), d_meta=4, stepz=3)


def test_decompose_rejects_a_meta_sae_of_another_width(trained):
    _, meta = trained
    with pytest.raises(ValueError, match="trained on this SAE's decoder"):
        decompose(make_sae(d_in=16, d_sae=48), meta)


def test_analysis_returns_the_meta_sae_tables_plot_and_card(planted, tmp_path):
    sae = sae_with_decoder(planted.decoder[:768])
    context = RunContext(sae=sae, release="rel", sae_id="sid", out_dir=tmp_path)
    analysis = MetaSAEAnalysis(MetaSAEConfig(steps=150, k=2), context)
    result = analysis.finish()
    meta = result.saes["meta_sae"]
    assert meta.cfg.d_sae == 36 and meta.cfg.metadata.base_sae_id == "sid"
    assert set(result.tables) == {"base_latents", "meta_latents", "memberships"}
    assert result.metrics["mean_active_meta_latents"] == pytest.approx(2.0)
    assert result.metrics["fraction_variance_explained"] > 0.5
    assert "meta_sae" in result.plots
    assert "36 meta-latents" in result.card
    assert len(result.tensors["training_mse"]) == 150


def batch_firing(latents: torch.Tensor, d_sae: int, d_in: int) -> ActivationBatch:
    """An activation batch in which exactly ``latents`` fire."""
    n = 8
    acts = torch.zeros(n, d_sae)
    acts[torch.arange(len(latents)) % n, latents] = 1.0
    return ActivationBatch(
        sae_in=torch.zeros(n, d_in),
        feature_acts=acts,
        sae_out=torch.zeros(n, d_in),
        tokens=torch.zeros(n, dtype=torch.long),
        token_context=torch.zeros(1, n, dtype=torch.long),
        positions=torch.zeros(n, 2, dtype=torch.long),
        offset=0,
    )


def test_analysis_leaves_out_latents_that_never_fired(planted, tmp_path):
    decoder = planted.decoder[:600].clone()
    decoder[::3] = torch.randn(200, 48, generator=torch.Generator().manual_seed(9))
    sae = sae_with_decoder(decoder)
    context = RunContext(sae=sae, release="rel", sae_id="sid", out_dir=tmp_path)
    alive = torch.tensor([i for i in range(600) if i % 3])
    analysis = MetaSAEAnalysis(MetaSAEConfig(steps=150, k=2), context)
    analysis.update(batch_firing(alive[:250], 600, 48))
    analysis.update(batch_firing(alive[250:], 600, 48))
    result = analysis.finish()
    table = result.tables["base_latents"]
    assert table["base_latent"].tolist() == alive.tolist()
    assert result.metrics["dead_base_latents_left_out"] == 200
    assert result.metrics["base_latents_used"] == 400
    assert result.metrics["d_meta"] == round(400 * 2304 / 49152)
    members = {m for ms in result.tables["meta_latents"]["members"] for m in ms}
    assert members <= set(alive.tolist())
    assert "200 dead latents left out" in result.card
    assert torch.equal(result.tensors["base_latent_ids"], alive)
    everything = MetaSAEAnalysis(
        MetaSAEConfig(steps=150, k=2, skip_dead=False), context
    )
    everything.update(batch_firing(alive, 600, 48))
    assert everything.trained_latents() is None


def test_latent_ids_out_of_range_are_rejected():
    with pytest.raises(ValueError, match=r"ids in \[0, 48\)"):
        train_meta_sae(make_sae(d_sae=48), latents=torch.tensor([3, 48]), d_meta=2)


def test_meta_sae_in_a_run_writes_a_loadable_sae(tiny_model, tiny_tokens, tmp_path):
    sae = sae_with_decoder(planted_decoder(480, 16, 24, seed=3).decoder)
    output = run(
        sae=sae,
        model=tiny_model,
        dataset=tiny_tokens,
        n_tokens=200,
        plugins=["meta_sae"],
        config={"meta_sae": {"steps": 100, "d_meta": 24}},
        out_dir=tmp_path / "run",
    )
    metrics = output.summary["analyses"]["meta_sae"]["metrics"]
    assert metrics["d_meta"] == 24 and metrics["d_sae"] == 480
    folder = output.run_dir / "meta_sae"
    assert (folder / "base_latents.parquet").is_file()
    assert (folder / "meta_sae.png").is_file()
    loaded = SAE.load_from_disk(folder / "meta_sae")
    assert loaded.cfg.d_sae == 24 and loaded.cfg.d_in == 16
    table = pd.read_parquet(folder / "meta_latents.parquet")
    assert table["n_members"].sum() == 4 * metrics["base_latents_used"]
