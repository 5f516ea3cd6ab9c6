"""How a run names its SAE: the release and SAE id shown in the card and run folder.

A named release keeps its name (a local folder keeps its path, with the
folder's name as SAE id when none is given).  An SAE passed as an object is
named from its ``cfg.metadata``: the release and SAE id when SAE-Lens or its
author recorded them, otherwise the model and the hook.
"""

from __future__ import annotations

from pathlib import Path

IN_MEMORY = "(in memory)"


def run_labels(sae, release: str | None, sae_id: str | None) -> tuple[str, str]:
    """``(release, sae_id)`` labels for a run on ``sae``."""
    from .plugins import get_registry

    registered = get_registry().releases().get(release or "")
    if registered is not None:
        return release, sae_id or registered.default_sae_id
    if release and Path(release).expanduser().is_dir():
        return release, sae_id or Path(release).expanduser().resolve().name
    if release:
        return release, sae_id or IN_MEMORY
    metadata = sae.cfg.metadata
    known_release = metadata.get("release") or metadata.get("model_name")
    return known_release or IN_MEMORY, sae_id or metadata_sae_id(metadata)


def metadata_sae_id(metadata) -> str:
    """The SAE id recorded in the metadata, else its hook (and head), else unknown."""
    if metadata.get("sae_id"):
        return str(metadata.get("sae_id"))
    hook = metadata.get("hook_name")
    if not hook:
        return IN_MEMORY
    head = metadata.get("hook_head_index")
    return f"{hook}.head{head}" if head is not None else hook
