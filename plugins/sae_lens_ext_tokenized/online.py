"""Train a tokenized SAE on streamed activation rows, in bounded memory.

Used by the ``tokenized`` analysis, which sees the host's shared pass one
batch at a time: rows are buffered (at most ``buffer_rows`` of them), and
each full buffer is first *evaluated* by the SAE trained so far (so every
point of the learning curve is measured on rows the SAE has not trained on,
progressive validation) and then shuffled and trained on with SAE-Lens's
``SAETrainer``.  The first buffer, after its evaluation (so step 0 is the
untrained SAE), initialises ``b_dec`` and the lookup tables from its
per-token means.
"""

from __future__ import annotations

import pandas as pd
import torch

from .evaluation import reconstruction_metrics
from .lookup_init import init_tables_from_means
from .training import TrainingOptions, make_trainer, new_training_sae, to_inference


class OnlineTokenizedTrainer:
    """Streams packed rows ``[n, d_in + 2]`` into a tokenized SAE's training."""

    def __init__(
        self,
        options: TrainingOptions,
        d_in: int,
        vocab_size: int,
        metadata: dict,
        buffer_rows: int = 8192,
        seed: int = 0,
    ):
        if buffer_rows < options.batch_size:
            raise ValueError(
                f"buffer_rows={buffer_rows} is smaller than batch_size="
                f"{options.batch_size}; raise buffer_rows or lower batch_size"
            )
        torch.manual_seed(seed)
        self.options = options
        self.sae = new_training_sae(options, d_in, vocab_size)
        for key, value in metadata.items():
            setattr(self.sae.cfg.metadata, key, value)
        self.trainer = make_trainer(self.sae, options, iter(()))
        self.buffer_rows = buffer_rows
        self.generator = torch.Generator().manual_seed(seed)
        self.pending: list[torch.Tensor] = []
        self.n_pending = 0
        self.records: list[dict] = []

    def add(self, rows: torch.Tensor) -> None:
        """Buffer packed rows; train on every full buffer."""
        self.pending.append(rows.float())
        self.n_pending += len(rows)
        while self.n_pending >= self.buffer_rows:
            rows = torch.cat(self.pending)
            self.pending = [rows[self.buffer_rows :]]
            self.n_pending = len(self.pending[0])
            self._train_on(rows[: self.buffer_rows])

    def finish(self):
        """Train on what is left (whole batches); return the inference SAE."""
        if self.n_pending >= self.options.batch_size:
            self._train_on(torch.cat(self.pending))
        self.pending, self.n_pending = [], 0
        if not self.records:
            raise ValueError(
                f"the run delivered fewer than batch_size={self.options.batch_size} "
                "rows, too few to train a tokenized SAE; raise n_tokens"
            )
        self.trainer.set_final_sae_metadata()
        return to_inference(self.sae, None)

    @property
    def curve(self) -> pd.DataFrame:
        """Per buffer: step and samples before it, held-out MSE, FVE, L0."""
        return pd.DataFrame(self.records)

    def _train_on(self, rows: torch.Tensor) -> None:
        metrics = reconstruction_metrics(self.sae, rows)  # before it sees them
        if not self.records:
            init_tables_from_means(self.sae, rows)
        self.records.append(
            {
                "step": self.trainer.n_training_steps,
                "samples": self.trainer.n_training_samples,
                "rows": len(rows),
                **metrics,
            }
        )
        order = torch.randperm(len(rows), generator=self.generator)
        for batch in rows[order].split(self.options.batch_size):
            if len(batch) < self.options.batch_size:
                break
            self.trainer.step(batch)
            self.trainer.n_training_steps += 1
