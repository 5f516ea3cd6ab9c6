"""A paired run of SAEBench's meta_structure eval and our meta-SAE trainer.

SAEBench's ``run_eval_single_sae`` runs unchanged; two recorders are put in
its module's namespace around its own objects: one keeps the starting
weights of the ``BatchTopKTrainingSAE`` it builds (and the object, which it
then trains in place), the other passes on each batch its data provider
yields and notes which decoder rows it holds.  Neither draws a random number,
so SAEBench's run is the one it makes without them.  Our trainer then starts
from those weights and takes those batches, so the two runs differ only in
their implementations.  Each final model is also scored by the other side's
scorer, which tells a training difference from a scoring one.
"""

from __future__ import annotations

import torch


class SAEBenchRecorder:
    """Records the start and the batches of one SAEBench meta_structure run."""

    def __init__(self, main_module):
        self.main = main_module
        self.start: dict[str, torch.Tensor] = {}
        self.batches: list[torch.Tensor] = []
        self.trained = None

    def __enter__(self):
        self._originals = (
            self.main.BatchTopKTrainingSAE,
            self.main._decoder_data_provider,
        )
        build, provide = self._originals

        def recording_sae(cfg, *args, **kwargs):
            sae = build(cfg, *args, **kwargs)
            self.start = {
                name: tensor.detach().clone()
                for name, tensor in sae.state_dict().items()
            }
            self.trained = sae
            return sae

        def recording_provider(decoder, batch_size):
            for batch in provide(decoder, batch_size):
                self.batches.append(row_indices(batch, decoder))
                yield batch

        self.main.BatchTopKTrainingSAE = recording_sae
        self.main._decoder_data_provider = recording_provider
        return self

    def __exit__(self, *exc):
        (
            self.main.BatchTopKTrainingSAE,
            self.main._decoder_data_provider,
        ) = self._originals


def row_indices(batch: torch.Tensor, decoder: torch.Tensor) -> torch.Tensor:
    """Which row of ``decoder`` each row of ``batch`` is (checked exact)."""
    with torch.no_grad():
        index = (batch @ decoder.T).argmax(dim=1)
    if not torch.equal(decoder[index], batch):
        raise RuntimeError("a batch row is not a decoder row: cannot pair the runs")
    return index.cpu()


def start_trainer_from(trainer, start: dict[str, torch.Tensor], batches) -> None:
    """Give our ``MetaSAETrainer`` SAEBench's starting weights and batches."""
    with torch.no_grad():
        trainer.W_enc_T.copy_(start["W_enc"].T)
        trainer.b_enc.copy_(start["b_enc"])
        trainer.W_dec.copy_(start["W_dec"])
        trainer.b_dec.copy_(start["b_dec"])
    replay = iter(batches)

    def recorded_indices(n: int):
        yield next(replay)

    trainer._batch_indices = recorded_indices


def their_scorer_on(main_module, weights, d_in: int, k: float, decoder, batch_size):
    """SAEBench's FVE of our final weights, loaded into its training class."""
    from sae_lens.saes.batchtopk_sae import (
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
    )

    cfg = BatchTopKTrainingSAEConfig(
        d_in=d_in,
        d_sae=weights.d_meta,
        k=k,
        device="cpu",
        rescale_acts_by_decoder_norm=True,
    )
    sae = BatchTopKTrainingSAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(weights.W_enc)
        sae.b_enc.copy_(weights.b_enc)
        sae.W_dec.copy_(weights.W_dec)
        sae.b_dec.copy_(weights.b_dec)
    fve, _ = main_module._decoder_variance_metrics(sae, decoder, batch_size)
    return fve


def our_scorer_on(trained, rows: torch.Tensor, k: float) -> float:
    """Our FVE (global BatchTopK threshold) of SAEBench's trained model."""
    from sae_lens_ext_meta_sae.trainer import (
        MetaSAEWeights,
        global_threshold,
        reconstruct,
    )

    with torch.no_grad():
        norms = trained.W_dec.norm(dim=1)
        weights = MetaSAEWeights(
            W_enc=(trained.W_enc * norms).float(),
            b_enc=(trained.b_enc * norms).float(),
            W_dec=(trained.W_dec / norms[:, None]).float(),
            b_dec=trained.b_dec.float(),
        )
        weights.threshold = global_threshold(weights, rows, k)
        residual = float((rows - reconstruct(weights, rows)).pow(2).sum())
    return 1.0 - residual / float((rows - rows.mean(0)).pow(2).sum())


def decoder_agreement(trained, weights) -> float:
    """Smallest cosine between matching rows of the two final decoders."""
    with torch.no_grad():
        theirs = trained.W_dec / trained.W_dec.norm(dim=1, keepdim=True)
        return float((theirs * weights.W_dec).sum(1).min())
