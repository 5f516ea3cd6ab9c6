"""Train a tokenized SAE with SAE-Lens's own language-model training runner.

SAE-Lens's ``ActivationsStore`` knows each activation's token id (it uses
them to drop special tokens) but yields activations alone, and its mixing
buffer shuffles rows.  :class:`TokenizedActivationsStore` packs the current
and previous token ids into every row (:func:`~.keys.pack_tokens`) before the
shuffle, so they stay with their activations; for an SAE keyed on an upstream
SAE it also captures the upstream hook in the same forward pass (SAE-Lens's
multi-hook capture) and packs those activations after the ids.
:class:`TokenizedSAETrainingRunner` is ``LanguageModelSAETrainingRunner`` with
that store.  Everything else (config, model loading, ``SAETrainer``,
checkpoints, the final ``save_inference_model``) is SAE-Lens's.
"""

from __future__ import annotations

import torch
from sae_lens import LanguageModelSAETrainingRunner
from sae_lens.training.activations_store import ActivationsStore

from .capture import check_hook_order, check_vocab
from .keys import pack_tokens, previous_tokens
from .sae import TokenizedTrainingSAE
from .upstream import uses_upstream


class TokenizedActivationsStore(ActivationsStore):
    """An ``ActivationsStore`` whose rows are ``[acts, token, previous token]``
    (then ``upstream acts`` after :meth:`add_upstream_hook`).

    The previous token is taken within each (``seqpos_slice``-d) sequence;
    the first kept position of a sequence gets ``NO_PREVIOUS``.
    """

    upstream_hook_name: str | None = None

    def add_upstream_hook(self, hook_name: str, d_in: int) -> None:
        """Also capture ``hook_name`` (``d_in`` wide) in the same forward pass;
        its activations follow the token columns of every row."""
        if self.cached_activation_dataset is not None:
            raise ValueError(
                "an upstream-SAE lookup needs the upstream hook's activations at "
                "every position, which cached activations do not hold: train from "
                "the model (use_cached_activations=False)"
            )
        self._hook_names = list(dict.fromkeys([self.hook_name, hook_name]))
        self._hook_d_ins = {self.hook_name: self.d_in, hook_name: d_in}
        self._hook_head_indices = {self.hook_name: self.hook_head_index}
        self.upstream_hook_name = hook_name

    def get_filtered_llm_batch(self, raise_on_epoch_end: bool = False) -> torch.Tensor:
        """Packed rows of the next LLM batch, special tokens filtered out."""
        if self.upstream_hook_name is None:
            acts, token_ids = self.get_raw_llm_batch(
                raise_on_epoch_end=raise_on_epoch_end
            )
            upstream_acts = None
        else:
            acts, token_ids, upstream_acts = self._two_hook_batch(raise_on_epoch_end)
        if token_ids is None:
            raise ValueError(
                "these cached activations have no 'token_ids' column, so a tokenized "
                "SAE cannot be trained on them: cache them again with token ids, or "
                "train from the model (use_cached_activations=False)"
            )
        sequences = token_ids.reshape(-1, self.training_context_size)
        prev = previous_tokens(sequences).reshape(-1)
        rows = pack_tokens(acts, token_ids, prev, upstream_acts)
        if self.exclude_special_tokens is not None:
            rows = rows[~torch.isin(token_ids, self.exclude_special_tokens)]
        return rows

    @torch.no_grad()
    def _two_hook_batch(
        self, raise_on_epoch_end: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Activations at both hooks (one forward pass) and the token ids, flat."""
        batch_tokens = self.get_batch_tokens(raise_at_epoch_end=raise_on_epoch_end)
        by_hook = self.get_multi_hook_activations(batch_tokens)
        flat = {}
        for hook, width in self._hook_d_ins.items():
            acts = by_hook[hook]
            if acts.shape[-1] != width:
                raise ValueError(
                    f"the model's {hook!r} has width {acts.shape[-1]} but the SAE "
                    f"expects {width}; use the model the SAEs were trained on"
                )
            flat[hook] = acts.reshape(-1, width).to(self.device, torch.float32)
        token_ids = batch_tokens[:, slice(*self.seqpos_slice)].reshape(-1)
        return (
            flat[self.hook_name],
            token_ids.to(self.device),
            flat[self.upstream_hook_name],
        )


class TokenizedSAETrainingRunner(LanguageModelSAETrainingRunner):
    """SAE-Lens's ``LanguageModelSAETrainingRunner`` for a tokenized SAE.

    Takes the same arguments; ``cfg.sae`` must be a
    :class:`~.sae.TokenizedTrainingSAEConfig` (or ``override_sae`` a tokenized
    training SAE) whose ``vocab_size`` is the model's ``d_vocab``.  With an
    upstream-SAE lookup, the upstream SAE the config references is loaded
    (and checked) here, before any activations are computed.  Tables start at
    zero unless ``override_sae`` brings initialised ones (see
    :func:`~.lookup_init.init_upstream_table`).
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
        self.activations_store = TokenizedActivationsStore.from_config(
            self.model, cfg, override_dataset=override_dataset
        )
        if uses_upstream(self.sae.cfg):
            sae_cfg = self.sae.cfg
            check_hook_order(self.model, sae_cfg.upstream_hook_name, cfg.hook_name)
            self.sae.attach_upstream(self.sae.upstream_sae)  # loaded now
            self.activations_store.add_upstream_hook(
                sae_cfg.upstream_hook_name, sae_cfg.upstream_d_in
            )
        self.evaluator.activations_store = self.activations_store
