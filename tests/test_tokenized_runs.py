"""The ``tokenized`` analysis (direct and in a run) and SAE-Lens's training runner."""

from __future__ import annotations

import pytest
import torch
from conftest import make_sae, runner_config
from sae_lens import SAE
from sae_lens_ext_tokenized import (
    MissingTokensError,
    TokenIdentityAnalysis,
    TokenIdentityConfig,
    TokenizedSAE,
    TokenizedSAETrainingRunner,
    TokenizedTrainingSAEConfig,
)
from sae_lens_ext_tokenized.analysis import GroupedMoments

from sae_lens_ext import ActivationBatch, RunContext, run

HOOK = "blocks.0.hook_resid_post"
SMALL_TRAINING = dict(k=4, batch_size=32, buffer_rows=256, lr=3e-3)


def test_leave_one_out_share_matches_brute_force():
    generator = torch.Generator().manual_seed(0)
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    values = torch.randn(10, 2, generator=generator, dtype=torch.float64)
    values[:, 0] += groups * 2.0  # column 0 depends on the group
    moments = GroupedMoments(2, 2)  # grows to 4 groups on demand
    moments.add(groups[:6], values[:6])
    moments.add(groups[6:], values[6:])
    errors = torch.zeros(2, dtype=torch.float64)
    for i in range(10):
        others = (groups == groups[i]) & (torch.arange(10) != i)
        guess = values[others].mean(0) if others.any() else values.mean(0)
        errors += (values[i] - guess).pow(2)
    total = (values - values.mean(0)).pow(2).sum(0)
    _, loo = moments.shares()
    assert torch.allclose(loo, 1 - errors / total, atol=1e-12)
    assert loo[0] > 0.8 and loo[1] < 0.3


def pure_token_batches(n_batches=6, n_seq=16, seq=12, vocab=40, d_in=16, seed=0):
    """Batches whose activations are a fixed vector per token, plus a little noise."""
    generator = torch.Generator().manual_seed(seed)
    table = torch.randn(vocab, d_in, generator=generator) * 2
    sae = make_sae()
    for index in range(n_batches):
        context = torch.randint(0, vocab, (n_seq, seq), generator=generator)
        positions = torch.cartesian_prod(torch.arange(n_seq), torch.arange(1, seq))
        tokens = context[positions[:, 0], positions[:, 1]]
        noise = 0.05 * torch.randn(len(tokens), d_in, generator=generator)
        acts = table[tokens] + noise
        with torch.no_grad():
            feats = sae.encode(acts)
            out = sae.decode(feats)
        yield ActivationBatch(
            acts, feats, out, tokens, context, positions, index * len(tokens)
        )


def test_analysis_sees_pure_token_data_as_token_identity(tiny_model, tmp_path):
    sae = make_sae()
    context = RunContext(
        sae=sae, release="tiny", sae_id="relu", out_dir=tmp_path, model=tiny_model
    )
    analysis = TokenIdentityAnalysis(TokenIdentityConfig(**SMALL_TRAINING), context)
    for batch in pure_token_batches():
        analysis.update(batch)
    result = analysis.finish()
    metrics = result.metrics
    assert metrics["token_share_of_activations"] > 0.99
    assert metrics["distinct_tokens"] == 40
    # the tokenized SAE trained in the analysis nails pure token data, on rows it
    # had not trained on yet, far better than the random analysed SAE does
    assert metrics["tokenized_sae_heldout_explained_variance"] > 0.95
    assert metrics["sae_explained_variance"] < 0.5
    assert isinstance(result.saes["tokenized_sae"], TokenizedSAE)
    assert result.saes["tokenized_sae"].cfg.d_sae == sae.cfg.d_sae
    assert len(result.tables["tokenized_sae_curve"]) >= 3


def test_analysis_in_a_run_publishes_a_loadable_tokenized_sae(
    tiny_model, tiny_tokens, tmp_path
):
    output = run(
        sae=make_sae(),
        model=tiny_model,
        dataset=tiny_tokens,
        plugins=["tokenized"],
        config={"tokenized": {**SMALL_TRAINING, "pair_buckets": 64}},
        out_dir=tmp_path / "run",
        n_tokens=700,
    )
    metrics = output.summary["analyses"]["tokenized"]["metrics"]
    assert 0 < metrics["token_share_of_activations_in_sample"] <= 1
    assert metrics["tokenized_sae_steps"] > 0
    folder = output.run_dir / "tokenized"
    assert (folder / "latents.csv").is_file()
    assert (folder / "tokenized_sae_curve.png").is_file()
    loaded = SAE.load_from_disk(folder / "tokenized_sae")
    assert isinstance(loaded, TokenizedSAE)
    assert loaded.cfg.pair_buckets == 64 and loaded.cfg.vocab_size == 40
    assert loaded.cfg.metadata.hook_name == HOOK
    with torch.no_grad(), loaded.capture_tokens(tiny_model):
        _, cache = tiny_model.run_with_cache(tiny_tokens[:2], names_filter=HOOK)
        with loaded.using_tokens(tiny_tokens[:2]):
            assert loaded(cache[HOOK]).shape == cache[HOOK].shape


@pytest.fixture
def token_dataset(tiny_tokens):
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": tiny_tokens.tolist()})


def test_activations_store_packs_each_row_with_its_tokens(
    tiny_model, tiny_tokens, token_dataset, tmp_path
):
    torch.manual_seed(0)
    sae_cfg = TokenizedTrainingSAEConfig(d_in=16, d_sae=32, k=2, vocab_size=40)
    runner = TokenizedSAETrainingRunner(
        runner_config(tmp_path, sae_cfg),
        override_dataset=token_dataset,
        override_model=tiny_model,
    )
    rows = runner.activations_store.get_filtered_llm_batch()
    first = tiny_tokens[:8]
    _, cache = tiny_model.run_with_cache(first, names_filter=HOOK)
    assert torch.allclose(rows[:, :16], cache[HOOK].reshape(-1, 16), atol=1e-5)
    assert torch.equal(rows[:, 16].long(), first.reshape(-1))
    prev = torch.cat([torch.full((8, 1), -1), first[:, :-1]], dim=1)
    assert torch.equal(rows[:, 17].long(), prev.reshape(-1))


def test_sae_lens_runner_trains_a_tokenized_sae(tiny_model, token_dataset, tmp_path):
    from sae_lens import LanguageModelSAETrainingRunner

    torch.manual_seed(0)
    sae_cfg = TokenizedTrainingSAEConfig(
        d_in=16, d_sae=32, k=2, vocab_size=40, pair_buckets=16
    )
    cfg = runner_config(tmp_path, sae_cfg)
    TokenizedSAETrainingRunner(
        cfg, override_dataset=token_dataset, override_model=tiny_model
    ).run()
    loaded = SAE.load_from_disk(tmp_path / "out")
    assert isinstance(loaded, TokenizedSAE) and loaded.cfg.pair_buckets == 16
    assert loaded.W_lookup.abs().sum() > 0 and loaded.W_pair_lookup.abs().sum() > 0
    plain = LanguageModelSAETrainingRunner(
        cfg, override_dataset=token_dataset, override_model=tiny_model
    )
    with pytest.raises(MissingTokensError, match="TokenizedSAETrainingRunner"):
        plain.run()
