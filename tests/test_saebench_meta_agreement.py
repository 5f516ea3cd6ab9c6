"""The meta-SAE at ``--preset saebench`` against SAEBench's meta_structure definition.

Three checks, from the smallest to the largest: the hand-written gradients
of the preset's rescaled decoder equal SAE-Lens's own ``BatchTopKTrainingSAE``
(the class SAEBench trains); a whole training run of our trainer equals a
dense re-implementation of SAEBench's eval (``saebench_meta_reference``,
written from its description) when both get the same start and the same
batches; and with their own random starts and batches the two give the same
variance explained within seed noise.
"""

from __future__ import annotations

import statistics
import sys
import types
from pathlib import Path

import pytest
import saebench_meta_reference as reference
import torch
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
from sae_lens.saes.sae import TrainStepInput
from sae_lens_ext_meta_sae import MetaSAEConfig, MetaSAETrainer, planted_decoder

from sae_lens_ext.presets import preset_overrides

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import saebench_meta_paired as paired  # noqa: E402


def preset_config(**changes) -> MetaSAEConfig:
    """The saebench preset's meta-SAE settings (float32), with ``changes``."""
    settings = preset_overrides("saebench")["meta_sae"]
    settings.pop("skip_dead")  # an option of the analysis, not the trainer
    return MetaSAEConfig(
        **{**settings, "autocast": False, "null_seeds": 0, "threads": 1, **changes}
    )


def noisy_planted(n_rows: int, seed: int) -> torch.Tensor:
    """Unit rows: sparse combinations of planted directions plus noise."""
    rows = planted_decoder(n_rows, 32, 48, seed=seed).decoder
    noise = torch.randn(rows.shape, generator=torch.Generator().manual_seed(seed))
    rows = rows + 0.3 * noise / rows.shape[1] ** 0.5
    return rows / rows.norm(dim=1, keepdim=True)


def test_rescaled_gradients_equal_sae_lens_batchtopk_training_sae():
    data = noisy_planted(300, seed=1)
    config = preset_config(k=3, batch_size=128)
    trainer = MetaSAETrainer(data, 20, config)
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():  # away from the symmetric start: free norms, biases
        trainer.b_enc.copy_(0.1 * torch.randn(20, generator=generator))
        trainer.b_dec.add_(0.1 * torch.randn(32, generator=generator))
        trainer.W_dec.mul_(1 + 3 * torch.rand(20, 1, generator=generator))
        trainer.W_enc_T.mul_(1 + torch.rand(20, 32, generator=generator))
    x = data[:128]
    loss, _ = trainer.gradients(x)

    cfg = BatchTopKTrainingSAEConfig(
        d_in=32, d_sae=20, k=3, rescale_acts_by_decoder_norm=True, device="cpu"
    )
    sae_lens = BatchTopKTrainingSAE(cfg)
    with torch.no_grad():
        sae_lens.W_enc.copy_(trainer.W_enc_T.T)
        sae_lens.W_dec.copy_(trainer.W_dec)
        sae_lens.b_enc.copy_(trainer.b_enc)
        sae_lens.b_dec.copy_(trainer.b_dec)
    step = TrainStepInput(
        sae_in=x,
        coefficients={},
        dead_neuron_mask=None,
        n_training_steps=0,
        is_logging_step=False,
    )
    output = sae_lens.training_forward_pass(step)
    output.loss.backward()
    assert loss == pytest.approx(output.loss.item(), rel=1e-5)
    pairs = [
        (trainer.W_enc_T.grad.T, sae_lens.W_enc.grad),
        (trainer.b_enc.grad, sae_lens.b_enc.grad),
        (trainer.W_dec.grad, sae_lens.W_dec.grad),
        (trainer.b_dec.grad, sae_lens.b_dec.grad),
    ]
    for ours, theirs in pairs:
        assert theirs.abs().max() > 1e-3  # a gradient that could disagree
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


def test_unit_decoder_gradients_differ_from_rescaled():
    """The two parametrisations are the same function with different
    decoder gradients: the test above would catch a trainer ignoring it."""
    data = noisy_planted(300, seed=1)
    grads = {}
    for norm, init_norm in (("unit", 1.0), ("rescaled", 0.1)):
        config = preset_config(decoder_norm=norm, decoder_init_norm=init_norm, k=3)
        trainer = MetaSAETrainer(data, 20, config)
        with torch.no_grad():
            trainer.W_dec.div_(trainer.W_dec.norm(dim=1, keepdim=True)).mul_(0.5)
        trainer.gradients(data[:128])
        grads[norm] = trainer.W_dec.grad.clone()
    assert not torch.allclose(grads["unit"], grads["rescaled"], rtol=0.1)


def test_preset_training_run_equals_reference_for_the_same_start_and_batches():
    data = noisy_planted(400, seed=2)
    config = preset_config(steps=40, seed=3)
    trainer = MetaSAETrainer(data, config.meta_width(len(data)), config)
    start = {
        "W_enc": trainer.W_enc_T.T.clone(),
        "b_enc": trainer.b_enc.clone(),
        "W_dec": trainer.W_dec.clone(),
        "b_dec": trainer.b_dec.clone(),
    }
    assert float(start["W_dec"].norm(dim=1).mean()) == pytest.approx(0.1)
    assert float(start["b_dec"].abs().max()) == 0.0
    drawn = []
    draw = trainer._batch_indices

    def recording(n):
        for index in draw(n):
            drawn.append(index.clone())
            yield index

    trainer._batch_indices = recording
    weights = trainer.fit(progress=False)
    assert len(drawn) == 40 and drawn[0].numel() == 1024  # more than the 400 rows
    assert len(set(drawn[0].tolist())) < 400  # drawn with replacement

    expected = reference.train(data, start, drawn, k=4, lr=5e-4, clip=1.0)
    # a selection can flip on a float-rounding tie and move a few rows a
    # little: the rows must agree in bulk, every one in direction
    unit = expected["W_dec"] / expected["W_dec"].norm(dim=1, keepdim=True)
    row_error = (weights.W_dec - unit).abs().amax(dim=1)
    assert float((row_error > 2e-4).float().mean()) < 0.1
    assert float((weights.W_dec * unit).sum(1).min()) > 0.99
    torch.testing.assert_close(weights.b_dec, expected["b_dec"], atol=1e-3, rtol=0)
    ours = fve(weights, data)
    theirs = reference.fraction_variance_explained(expected, data)
    assert ours == pytest.approx(theirs, rel=2e-3)


def test_paired_recording_of_a_sae_lens_run_gives_our_trainer_its_path():
    """``bench/saebench_meta_paired``: recorded around SAE-Lens's own
    ``SAETrainer`` run (as around SAEBench's eval), the start and batches
    make our preset trainer reach the same model, and the recorders go."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    data = noisy_planted(256, seed=6)
    steps, batch, width = 40, 128, 32

    def provider(decoder, batch_size):
        generator = torch.Generator().manual_seed(1)
        while True:
            index = torch.randint(len(decoder), (batch_size,), generator=generator)
            yield decoder[index]

    module = types.SimpleNamespace(
        BatchTopKTrainingSAE=BatchTopKTrainingSAE, _decoder_data_provider=provider
    )
    with paired.SAEBenchRecorder(module) as recorder:
        torch.manual_seed(0)
        sae = module.BatchTopKTrainingSAE(
            BatchTopKTrainingSAEConfig(
                d_in=32,
                d_sae=width,
                k=4,
                device="cpu",
                rescale_acts_by_decoder_norm=True,
            )
        )
        trainer_cfg = SAETrainerConfig(
            n_checkpoints=0,
            checkpoint_path=None,
            save_final_checkpoint=False,
            total_training_samples=steps * batch,
            device="cpu",
            autocast=False,
            lr=5e-4,
            lr_end=5e-4,
            lr_scheduler_name="constant",
            lr_warm_up_steps=0,
            lr_decay_steps=0,
            train_batch_size_samples=batch,
            logger=LoggingConfig(log_to_wandb=False),
        )
        provided = module._decoder_data_provider(data, batch)
        SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=provided).fit()
    assert module.BatchTopKTrainingSAE is BatchTopKTrainingSAE
    assert module._decoder_data_provider is provider
    assert len(recorder.batches) == steps and recorder.trained is sae
    moved = (sae.W_dec.detach() - recorder.start["W_dec"]).abs().max()
    assert float(moved) > 1e-3  # training went somewhere to follow

    trainer = MetaSAETrainer(data, width, preset_config(steps=steps, batch_size=batch))
    paired.start_trainer_from(trainer, recorder.start, recorder.batches)
    weights = trainer.fit(progress=False)
    assert paired.decoder_agreement(sae, weights) > 0.999
    theirs = paired.our_scorer_on(sae, data, 4)
    assert fve(weights, data) == pytest.approx(theirs, rel=1e-3)


def test_paired_row_indices_refuse_rows_not_in_the_decoder():
    decoder = noisy_planted(50, seed=7)
    index = torch.tensor([3, 3, 49, 0])
    assert torch.equal(paired.row_indices(decoder[index], decoder), index)
    with pytest.raises(RuntimeError, match="not a decoder row"):
        paired.row_indices(decoder[index] * 1.01, decoder)


def fve(weights, data: torch.Tensor) -> float:
    """Our score: the saved threshold's reconstruction, centred variance."""
    from sae_lens_ext_meta_sae.trainer import reconstruct

    residual = float((data - reconstruct(weights, data)).pow(2).sum())
    return 1.0 - residual / float((data - data.mean(0)).pow(2).sum())


@pytest.mark.slow
def test_preset_matches_reference_within_seed_noise():
    """Six seeds each at SAEBench's settings but 300 steps of 256 rows on a
    planted 512-row decoder, each side with its own random start and
    batches: the preset's mean FVE is the reference's within three standard
    errors of the difference."""
    data = noisy_planted(512, seed=5)
    seeds = range(6)
    theirs = [
        reference.saebench_meta_fve(data, seed, steps=300, batch_size=256)
        for seed in seeds
    ]
    ours = []
    for seed in seeds:
        config = preset_config(steps=300, batch_size=256, seed=seed)
        trainer = MetaSAETrainer(data, config.meta_width(len(data)), config)
        ours.append(fve(trainer.fit(progress=False), data))
    error = (
        statistics.variance(ours) / len(ours)
        + statistics.variance(theirs) / len(theirs)
    ) ** 0.5
    assert abs(statistics.mean(ours) - statistics.mean(theirs)) < 3 * error


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"decoder_norm": "free"}, "decoder_norm must be one of 'unit', 'rescaled'"),
        ({"b_dec_init": "median"}, "b_dec_init must be one of 'mean', 'zero'"),
        ({"sampling": "random"}, "'replacement'"),
        ({"decoder_init_norm": 0.1}, "needs decoder_norm='rescaled'"),
        ({"decoder_norm": "rescaled", "decoder_init_norm": 0.0}, "positive"),
        ({"grad_clip": -1.0}, "grad_clip must be >= 0"),
    ],
)
def test_trainer_options_fail_with_the_fix(options, message):
    with pytest.raises(ValueError, match=message):
        MetaSAEConfig(**options)
