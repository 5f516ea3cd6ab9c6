"""Feed a model's input token ids to a tokenized SAE at inference.

A forward pre-hook on the model's token embedding (``model.embed``) binds the
ids of every forward pass to the SAE before any hook point runs, so the SAE
can sit anywhere in a ``HookedSAETransformer`` (``run_with_saes``,
``run_with_cache_with_saes``, ``add_sae``) or in a plain ``run_with_hooks``.
It is a PyTorch hook, not a TransformerLens hook point, so
``model.reset_hooks()`` and ``reset_saes()`` leave it in place; remove it
with the returned handle.
"""

from __future__ import annotations

from torch.utils.hooks import RemovableHandle


def capture_tokens(model, sae) -> RemovableHandle:
    """Bind ``model``'s input ids to ``sae`` on each forward; return the handle.

    Raises ValueError when the model's vocabulary does not match the SAE's
    token table, TypeError when ``model`` has no token embedding.
    """
    embed = getattr(model, "embed", None)
    if embed is None or not hasattr(model, "cfg"):
        raise TypeError(
            f"{type(model).__name__} has no TransformerLens token embedding "
            "(model.embed); bind tokens yourself with sae.set_tokens(tokens)"
        )
    check_vocab(sae, model.cfg.d_vocab)

    def bind_input_ids(module, args):
        sae.set_tokens(args[0])

    return embed.register_forward_pre_hook(bind_input_ids)


def check_vocab(sae, d_vocab: int) -> None:
    """Raise ValueError when the SAE's token table does not fit ``d_vocab``."""
    if sae.cfg.vocab_size != d_vocab:
        raise ValueError(
            f"the SAE's token table has vocab_size={sae.cfg.vocab_size} rows but "
            f"the model has d_vocab={d_vocab}; use the model the SAE was trained "
            "on (cfg.metadata.model_name)"
        )
