"""Meta-SAE null baseline, nearest base latents, frequency-weighted sampling."""

from __future__ import annotations

import pytest
import torch
from sae_lens_ext_meta_sae import (
    decompose,
    planted_decoder,
    train_meta_sae,
)
from sae_lens_ext_meta_sae.null import random_unit_rows
from test_meta_sae import sae_with_decoder

OPTIONS = {"d_meta": 64, "k": 2, "steps": 300, "batch_size": 512, "progress": False}


@pytest.fixture(scope="module")
def random_result():
    """A meta-SAE on a random decoder (not the null's seeds), decomposed."""
    sae = sae_with_decoder(random_unit_rows(1536, 48, seed=5))
    meta = train_meta_sae(sae, seed=1, null_seeds=4, **OPTIONS)
    return decompose(sae, meta)


def test_random_decoder_fve_equals_its_null_within_noise(random_result):
    m = random_result.metrics
    assert m["null_seeds"] == 4 and m["null_fve_std"] > 0
    assert 0.1 < m["null_fve"] < 0.9  # the trainer explains a share of noise too
    assert abs(m["fve_above_null"]) <= m["null_threshold"]
    assert not m["distinguishable_from_null"]


def test_planted_decoder_is_well_above_its_null():
    planted = planted_decoder(1536, 48, 64, max_parts=2, noise=0.05, seed=0)
    sae = sae_with_decoder(planted.decoder)
    meta = train_meta_sae(sae, seed=0, null_seeds=3, **OPTIONS)
    m = decompose(sae, meta).metrics
    assert m["distinguishable_from_null"]
    assert m["fve_above_null"] > 0.2
    assert m["fve_above_null"] > 10 * m["null_threshold"] or m["null_fve_std"] == 0


def test_nearest_base_latents_are_the_largest_decoder_cosines(random_result):
    table = random_result.meta_latents
    rows = random_unit_rows(1536, 48, seed=5)
    assert table["nearest_base_latents"].map(len).eq(5).all()
    row = table.iloc[3]
    cosines = row["nearest_base_cosines"]
    assert cosines == sorted(cosines, reverse=True)
    assert -1 <= cosines[-1] <= cosines[0] <= 1
    assert len(set(row["nearest_base_latents"])) == 5
    assert rows.shape[0] == 1536


def test_null_can_be_turned_off_and_needs_recorded_options():
    sae = sae_with_decoder(random_unit_rows(256, 16, seed=2))
    meta = train_meta_sae(
        sae, d_meta=16, k=2, steps=50, batch_size=128, progress=False, null_seeds=0
    )
    assert "null_fve" not in decompose(sae, meta).metrics
    meta.cfg.metadata.meta_sae_training = None  # a meta-SAE trained elsewhere
    assert "null_fve" not in decompose(sae, meta, null_seeds=3).metrics


def test_frequency_sampling_fits_frequent_latents_better():
    """Half the latents fire 50x more often: sampling by frequency raises the
    frequency-weighted FVE (and is matched in its null)."""
    planted = planted_decoder(1024, 32, 96, max_parts=3, noise=0.2, seed=3)
    sae = sae_with_decoder(planted.decoder)
    frequency = torch.full((1024,), 0.001)
    frequency[:512] = 0.05
    results = {}
    for sampling in ("uniform", "frequency"):
        meta = train_meta_sae(
            sae,
            seed=0,
            sampling=sampling,
            firing_frequency=frequency,
            null_seeds=1,
            d_meta=32,
            k=2,
            steps=300,
            batch_size=256,
            progress=False,
        )
        results[sampling] = decompose(sae, meta, firing_frequency=frequency).metrics
    weighted = {s: m["frequency_weighted_fve"] for s, m in results.items()}
    assert weighted["frequency"] > weighted["uniform"] + 0.01
    assert "null_fve" in results["frequency"]


def test_frequency_sampling_needs_frequencies():
    sae = sae_with_decoder(random_unit_rows(256, 16, seed=2))
    with pytest.raises(ValueError, match="firing_frequency"):
        train_meta_sae(sae, d_meta=16, k=2, steps=5, sampling="frequency")
