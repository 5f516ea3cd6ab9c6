"""Training tokenized SAEs on SAE-Lens's SAETrainer, the comparison, CLI, analysis."""

from __future__ import annotations

import pytest
import torch
from sae_lens import SAE, SAETrainer
from sae_lens.config import SAETrainerConfig
from sae_lens.training.mixing_buffer import mixing_buffer
from sae_lens_ext_tokenized import (
    TokenizedTrainingSAE,
    TokenizedTrainingSAEConfig,
    TrainingOptions,
    compare_with_baseline,
    init_tables_from_means,
    init_tables_from_unigrams,
    pack_tokens,
    train_tokenized_sae,
)
from sae_lens_ext_tokenized.data import packed_rows
from sae_lens_ext_tokenized.training import set_lookup_lr

from sae_lens_ext.plugins import get_registry

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def corpus():
    """240 random sequences of 12 tokens for the tiny model, BOS (0) first."""
    generator = torch.Generator().manual_seed(3)
    tokens = torch.randint(1, 40, (240, 12), generator=generator)
    tokens[:, 0] = 0
    return tokens


def training_sae(**changes) -> TokenizedTrainingSAE:
    """A tokenized TopK training SAE for the tiny model (d_in 16, vocab 40)."""
    get_registry()
    torch.manual_seed(0)
    kwargs = dict(d_in=16, d_sae=32, k=2, vocab_size=40) | changes
    return TokenizedTrainingSAE(TokenizedTrainingSAEConfig(**kwargs))


def test_unmodified_sae_trainer_fits_packed_batches_through_a_mixing_buffer():
    """Pure token data (x = E[token]): only a table that sees the right tokens fits it."""
    torch.manual_seed(1)
    table = torch.randn(40, 16) * 3
    sae = training_sae(k=1)

    def packed_batches():
        while True:
            tokens = torch.randint(0, 40, (256,))
            yield pack_tokens(table[tokens], tokens)

    cfg = SAETrainerConfig(
        total_training_samples=300 * 64, train_batch_size_samples=64, lr=0.05,
        lr_end=0.05,
    )  # fmt: skip
    mixed = mixing_buffer(1024, 64, packed_batches())
    SAETrainer(cfg, sae, mixed).fit()
    tokens = torch.arange(40)
    with torch.no_grad(), sae.using_tokens(tokens):
        mse = (sae(table) - table).pow(2).mean().item()
    assert mse < 0.02 * table.pow(2).mean().item()


def test_mean_initialisation_is_the_per_token_mean():
    sae = training_sae(pair_buckets=5)
    acts = torch.tensor([[1.0] * 16, [3.0] * 16, [10.0] * 16, [10.0] * 16])
    tokens = torch.tensor([4, 4, 7, 7])
    stats = init_tables_from_means(sae, pack_tokens(acts, tokens))
    assert torch.allclose(sae.b_dec, torch.full((16,), 6.0))
    assert torch.allclose(sae.W_lookup[4], torch.full((16,), -4.0))
    assert torch.allclose(sae.W_lookup[7], torch.full((16,), 4.0))
    assert sae.W_lookup[[0, 5, 39]].abs().max() == 0  # unseen tokens stay zero
    assert stats["tokens_seen"] == 2
    init_tables_from_means(sae, pack_tokens(acts, tokens), shrinkage=2.0)
    assert torch.allclose(sae.W_lookup[7], torch.full((16,), 2.0))  # 8 / (2 + 2)


def test_unigram_initialisation_reads_the_token_after_bos(tiny_model):
    sae = training_sae()
    init_tables_from_unigrams(sae, tiny_model, HOOK, scale=0.5)
    _, cache = tiny_model.run_with_cache(torch.tensor([[0, 17]]), names_filter=HOOK)
    assert torch.allclose(sae.W_lookup[17], 0.5 * cache[HOOK][0, 1], atol=1e-5)


def test_lookup_learning_rate_makes_two_groups():
    sae = training_sae(pair_buckets=3)
    cfg = SAETrainerConfig(
        total_training_samples=640, train_batch_size_samples=64, lr=1e-3, lr_end=1e-3
    )
    trainer = SAETrainer(cfg, sae, iter([]))
    set_lookup_lr(trainer, 1e-2)
    groups = trainer.optimizer.param_groups
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 1e-2])
    assert {id(p) for p in groups[1]["params"]} == {
        id(sae.W_lookup),
        id(sae.W_pair_lookup),
    }


def test_packed_rows_skip_bos_and_carry_previous_tokens(tiny_model, corpus):
    rows = packed_rows(tiny_model, HOOK, corpus[:2])
    assert rows.shape == (2 * 11, 16 + 2)
    assert torch.equal(rows[:11, 16].long(), corpus[0, 1:])
    assert torch.equal(rows[:11, 17].long(), corpus[0, :-1])


def test_tokenized_topk_reaches_lower_mse_than_plain_topk(tiny_model, corpus, tmp_path):
    """The measured claim at small scale: same width, k, steps, data, init."""
    options = TrainingOptions(
        d_sae=32, k=2, steps=150, batch_size=128, lr=3e-3, eval_every=50,
        init_tokens=2000,
    )  # fmt: skip
    result = compare_with_baseline(
        tiny_model, HOOK, corpus, options, ce_sequences=16, out_dir=tmp_path,
        progress=False,
    )  # fmt: skip
    table = result.table.set_index("arm")
    assert table.loc["tokenized", "mse"] < 0.8 * table.loc["baseline", "mse"]
    assert (table.explained_variance > 0).all()
    assert table[["ce_loss_clean", "ce_loss_spliced"]].notna().all().all()
    assert result.speedup is not None and result.speedup > 1
    assert list(result.arms["tokenized"].curve.step) == [0, 50, 100, 150]
    loaded = SAE.load_from_disk(tmp_path / "tokenized")
    assert loaded.cfg.vocab_size == 40 and loaded.cfg.metadata.hook_name == HOOK


def test_training_rejects_a_dataset_beyond_the_vocabulary(tiny_model, corpus):
    with pytest.raises(ValueError, match="d_vocab=40"):
        train_tokenized_sae(tiny_model, HOOK, corpus + 40, steps=1, progress=False)


def test_cli_trains_and_saves_in_sae_lens_format(
    tiny_model, corpus, tmp_path, fresh_registry
):
    from click.testing import CliRunner
    from conftest import register_model_release

    from sae_lens_ext.cli import build_cli

    register_model_release("tiny", tiny_model, corpus)
    out = tmp_path / "run"
    args = [
        "train-tokenized", "--model", "tiny", "--out", str(out), "--d-sae", "32",
        "--k", "2", "--steps", "20", "--batch-size", "64", "--pair-buckets", "64",
    ]  # fmt: skip
    done = CliRunner().invoke(build_cli(), args, catch_exceptions=False)
    assert done.exit_code == 0, done.output
    assert "Saved" in done.output and "ce_loss_spliced" in done.output
    sae = SAE.load_from_disk(out / "sae")
    assert sae.cfg.pair_buckets == 64
    assert (out / "curve.csv").is_file()
