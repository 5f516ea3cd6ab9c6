"""Train a tokenized SAE with SAE-Lens's own language-model training runner.

SAE-Lens's ``ActivationsStore`` knows each activation's token id (it uses
them to drop special tokens) but yields activations alone, and its mixing
buffer shuffles rows.  :class:`TokenizedActivationsStore` packs the current
and previous token ids into every row (:func:`~.keys.pack_tokens`) before the
shuffle, so they stay with their activations; :class:`TokenizedSAETrainingRunner`
is ``LanguageModelSAETrainingRunner`` with that store.  Everything else
(config, model loading, ``SAETrainer``, checkpoints, the final
``save_inference_model``) is SAE-Lens's.
"""

from __future__ import annotations

import torch
from sae_lens import LanguageModelSAETrainingRunner
from sae_lens.training.activations_store import ActivationsStore

from .capture import check_vocab
from .keys import pack_tokens, previous_tokens
from .sae import TokenizedTrainingSAE
from .upstream import uses_upstream


class TokenizedActivationsStore(ActivationsStore):
    """An ``ActivationsStore`` whose rows are ``[acts, token, previous token]``.

    The previous token is taken within each (``seqpos_slice``-d) sequence;
    the first kept position of a sequence gets ``NO_PREVIOUS``.
    """

    def get_filtered_llm_batch(self, raise_on_epoch_end: bool = False) -> torch.Tensor:
        """Packed rows of the next LLM batch, special tokens filtered out."""
        acts, token_ids = self.get_raw_llm_batch(raise_on_epoch_end=raise_on_epoch_end)
        if token_ids is None:
            raise ValueError(
                "these cached activations have no 'token_ids' column, so a tokenized "
                "SAE cannot be trained on them: cache them again with token ids, or "
                "train from the model (use_cached_activations=False)"
            )
        sequences = token_ids.reshape(-1, self.training_context_size)
        prev = previous_tokens(sequences).reshape(-1)
        rows = pack_tokens(acts, token_ids, prev)
        if self.exclude_special_tokens is not None:
            rows = rows[~torch.isin(token_ids, self.exclude_special_tokens)]
        return rows


class TokenizedSAETrainingRunner(LanguageModelSAETrainingRunner):
    """SAE-Lens's ``LanguageModelSAETrainingRunner`` for a tokenized SAE.

    Takes the same arguments; ``cfg.sae`` must be a
    :class:`~.sae.TokenizedTrainingSAEConfig` (or ``override_sae`` a tokenized
    training SAE) whose ``vocab_size`` is the model's ``d_vocab``.
    """

    def __init__(
        self, cfg, override_dataset=None, override_model=None, override_sae=None
    ):
        super().__init__(cfg, override_dataset, override_model, override_sae)
        if not isinstance(self.sae, TokenizedTrainingSAE):
            raise TypeError(
                f"TokenizedSAETrainingRunner trains tokenized SAEs, got "
                f"{type(self.sae).__name__}; set cfg.sae to a "
                "TokenizedTrainingSAEConfig or use LanguageModelSAETrainingRunner"
            )
        check_vocab(self.sae, self.model.cfg.d_vocab)
        if uses_upstream(self.sae.cfg):
            raise ValueError(
                f"lookup={self.sae.cfg.lookup!r}: this runner packs token ids only, not "
                "the upstream hook's activations; train an upstream lookup with "
                "train_tokenized_sae(...) or `sae-lens-ext train-tokenized --lookup "
                f"{self.sae.cfg.lookup} --upstream RELEASE/ID`"
            )
        self.activations_store = TokenizedActivationsStore.from_config(
            self.model, cfg, override_dataset=override_dataset
        )
        self.evaluator.activations_store = self.activations_store
