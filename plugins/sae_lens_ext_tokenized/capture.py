"""Feed a model's input token ids to a tokenized SAE at inference.

A forward pre-hook on the model's token embedding (``model.embed``) binds the
ids of every forward pass to the SAE before any hook point runs, so the SAE
can sit anywhere in a ``HookedSAETransformer`` (``run_with_saes``,
``run_with_cache_with_saes``, ``add_sae``) or in a plain ``run_with_hooks``.
For an SAE keyed on an upstream SAE, a forward hook on the upstream hook
point (``cfg.upstream_hook_name``) encodes its output with the upstream SAE
and binds the codes, in the same forward pass, before the SAE's own hook runs.
These are PyTorch hooks, not TransformerLens hook functions, so
``model.reset_hooks()`` and ``reset_saes()`` leave them in place; remove them
with the returned handle.
"""

from __future__ import annotations

from .upstream import uses_upstream


class CaptureHandle:
    """The hooks :func:`capture_tokens` added; ``remove()`` or ``with`` detaches."""

    def __init__(self, handles):
        self.handles = handles

    def remove(self) -> None:
        """Detach every hook."""
        for handle in self.handles:
            handle.remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()


def capture_tokens(model, sae) -> CaptureHandle:
    """Bind ``model``'s input ids (and upstream codes) to ``sae`` on each forward.

    Raises ValueError when the model's vocabulary does not match the SAE's
    token table or the upstream hook does not run before the SAE's hook,
    TypeError when ``model`` has no token embedding.
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

    handles = [embed.register_forward_pre_hook(bind_input_ids)]
    if uses_upstream(sae.cfg):
        hook_name = sae.cfg.upstream_hook_name
        check_hook_order(model, hook_name, sae.cfg.metadata.hook_name)
        sae.attach_upstream(sae.upstream_sae)  # loaded now, not in a forward pass

        def bind_upstream(module, args, output):
            sae.bind_upstream_acts(output)

        upstream_point = model.hook_dict[hook_name]
        handles.append(upstream_point.register_forward_hook(bind_upstream))
    return CaptureHandle(handles)


# Execution order of a TransformerLens block's hook points (module order is
# not execution order: hook_resid_pre is registered after the attention's).
_BLOCK_ORDER = (
    "hook_resid_pre", "ln1", "hook_attn_in", "hook_q_input", "hook_k_input",
    "hook_v_input", "attn", "hook_attn_out", "hook_resid_mid", "ln2",
    "hook_mlp_in", "mlp", "hook_mlp_out", "hook_resid_post",
)  # fmt: skip


def hook_position(name: str) -> tuple[float, int]:
    """(layer, rank within the block) of a TransformerLens hook name."""
    parts = name.split(".")
    if parts[0] != "blocks":
        return (float("inf"), 0) if parts[0].startswith("ln_final") else (-1.0, 0)
    sub = parts[2] if len(parts) > 2 else ""
    rank = _BLOCK_ORDER.index(sub) if sub in _BLOCK_ORDER else len(_BLOCK_ORDER) // 2
    return float(parts[1]), rank


def check_hook_order(model, upstream_hook: str, hook_name: str | None) -> None:
    """Raise ValueError unless ``upstream_hook`` runs before ``hook_name``."""
    for name in (upstream_hook, hook_name):
        if name is not None and name not in model.hook_dict:
            raise ValueError(
                f"the model has no hook {name!r}; use the model the SAEs were "
                "trained on (cfg.metadata.model_name)"
            )
    if hook_name is not None and hook_position(upstream_hook) >= hook_position(
        hook_name
    ):
        raise ValueError(
            f"the upstream SAE's hook {upstream_hook!r} does not run before this "
            f"SAE's hook {hook_name!r}; choose an upstream SAE at an earlier hook"
        )


def check_vocab(sae, d_vocab: int) -> None:
    """Raise ValueError when the SAE's token table does not fit ``d_vocab``."""
    if sae.cfg.vocab_size != d_vocab:
        raise ValueError(
            f"the SAE's token table has vocab_size={sae.cfg.vocab_size} rows but "
            f"the model has d_vocab={d_vocab}; use the model the SAE was trained "
            "on (cfg.metadata.model_name)"
        )
