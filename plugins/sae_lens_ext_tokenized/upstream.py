"""The upstream-SAE lookup: a table keyed on a frozen upstream SAE's latents.

Pearce's extension of tokenized SAEs: besides (or instead of) the current
token, key the lookup on the latents of an SAE at an earlier hook, which may
capture the "effective tokens" (bigrams, trigrams, names) that earlier layers
form.  With ``g`` the upstream SAE's code at the same position::

    upstream_key="codes":  term = g @ U            (= sum_j g_j U[j])
    upstream_key="top1":   term = U[argmax_j g_j]  (0 where no latent fires)

The upstream SAE is referenced by ``(upstream_release, upstream_sae_id)`` in
the config, so a saved SAE loads it back with ``sae_lens_ext.load_sae``; it
stays frozen and is never part of the downstream SAE's parameters or state
dict.
"""

from __future__ import annotations

import torch

LOOKUPS = ("token", "upstream_sae", "both")
UPSTREAM_KEYS = ("codes", "top1")


def uses_token_table(cfg) -> bool:
    """Whether ``cfg`` has a per-token table (``lookup`` token or both)."""
    return cfg.lookup in ("token", "both")


def uses_upstream(cfg) -> bool:
    """Whether ``cfg`` has an upstream-SAE table (``lookup`` upstream_sae or both)."""
    return cfg.lookup in ("upstream_sae", "both")


def check_upstream_config(cfg) -> None:
    """Raise ValueError for an unknown lookup or an incomplete upstream reference."""
    if cfg.lookup not in LOOKUPS:
        raise ValueError(f"lookup={cfg.lookup!r}; choose one of {list(LOOKUPS)}")
    if cfg.upstream_key not in UPSTREAM_KEYS:
        raise ValueError(
            f"upstream_key={cfg.upstream_key!r}; choose one of {list(UPSTREAM_KEYS)}"
        )
    if not uses_upstream(cfg):
        return
    missing = [
        name
        for name in ("upstream_release", "upstream_hook_name")
        if not getattr(cfg, name)
    ] + [name for name in ("upstream_d_in", "upstream_d_sae") if getattr(cfg, name) < 1]
    if missing:
        raise ValueError(
            f"lookup={cfg.lookup!r} needs the upstream SAE's reference and shape; "
            f"missing {missing}. Build the config with upstream_fields(upstream_sae, "
            "release, sae_id) (or pass --upstream RELEASE/ID on the command line)"
        )


def upstream_fields(upstream_sae, release: str, sae_id: str | None) -> dict:
    """Config fields referencing ``upstream_sae`` (loaded from ``release``/``sae_id``)."""
    hook = upstream_sae.cfg.metadata.hook_name
    if not hook:
        raise ValueError(
            f"the upstream SAE {release}/{sae_id} names no hook "
            "(cfg.metadata.hook_name); its codes cannot be computed in a forward "
            "pass. Set its metadata.hook_name and save it again"
        )
    return dict(
        upstream_release=str(release),
        upstream_sae_id=sae_id,
        upstream_hook_name=hook,
        upstream_d_in=upstream_sae.cfg.d_in,
        upstream_d_sae=upstream_sae.cfg.d_sae,
    )


def parse_upstream(reference: str) -> tuple[str, str | None]:
    """``"<release>/<id>"`` split at its last ``/`` (a bare folder: ``(it, None)``)."""
    from pathlib import Path

    path = Path(reference).expanduser()
    if path.is_dir() and (path / "cfg.json").is_file():
        return str(path), None
    release, _, sae_id = reference.rpartition("/")
    if not release or not sae_id:
        raise ValueError(
            f"--upstream {reference!r} is not RELEASE/ID (e.g. "
            "sae-lens-ext/demo/resid0-topk-1024) nor an SAE-Lens folder"
        )
    return release, sae_id


def load_upstream_sae(cfg, device):
    """Load and check the upstream SAE that ``cfg`` references, frozen."""
    from sae_lens_ext import load_sae

    sae = load_sae(cfg.upstream_release, cfg.upstream_sae_id, device=str(device))
    check_upstream_sae(cfg, sae)
    return freeze(sae)


def check_upstream_sae(cfg, sae) -> None:
    """Raise ValueError when ``sae`` is not the upstream SAE ``cfg`` was built for."""
    found = (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.metadata.hook_name)
    wanted = (cfg.upstream_d_in, cfg.upstream_d_sae, cfg.upstream_hook_name)
    if found != wanted:
        raise ValueError(
            f"the upstream SAE {cfg.upstream_release}/{cfg.upstream_sae_id} has "
            f"(d_in, d_sae, hook) = {found} but this SAE's table was built for "
            f"{wanted}; attach the SAE it was trained with (attach_upstream)"
        )


def freeze(sae):
    """``sae`` in eval mode with gradients off."""
    sae.eval()
    for parameter in sae.parameters():
        parameter.requires_grad_(False)
    return sae


def key_weights(codes: torch.Tensor, key: str) -> torch.Tensor:
    """The weight of each table row at each position: the codes themselves
    (``key="codes"``), or a one-hot of the most active latent (``"top1"``,
    all zero where none fires); ``upstream_term`` is ``key_weights @ table``."""
    if key == "codes":
        return codes
    top = codes.max(dim=-1)
    fired = (top.values > 0).to(codes.dtype).unsqueeze(-1)
    return torch.zeros_like(codes).scatter_(-1, top.indices.unsqueeze(-1), fired)


def upstream_term(codes: torch.Tensor, table: torch.Tensor, key: str) -> torch.Tensor:
    """``codes @ table`` (``key="codes"``) or the top latent's row (``"top1"``)."""
    codes = codes.to(table.dtype)
    if key == "codes":
        return codes @ table
    top = codes.max(dim=-1)
    fired = (top.values > 0).to(table.dtype).unsqueeze(-1)
    return table[top.indices] * fired
