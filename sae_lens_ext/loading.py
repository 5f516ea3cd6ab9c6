"""Load SAEs and their models by name.

``load_sae(release, sae_id)`` looks, in order, at releases registered by
plugins, at a local folder in SAE-Lens format, and at SAE-Lens's own
``SAE.from_pretrained`` (its directory of releases, or a Hugging Face repo
id).  Unknown names fail with the closest known names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from .legacy_config import fill_legacy_metadata
from .plugins import get_registry, unknown_name_message
from .releases import Release
from .validation import InputError, check_sae_weights

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

WEIGHTS_FILE = "sae_weights.safetensors"
CONFIG_FILE = "cfg.json"


class SAELoadError(RuntimeError):
    """An SAE could not be found or read; the message says what to do."""


def load_sae(
    release: str, sae_id: str | None = None, *, device: str = "cpu", dtype=None
) -> SAE:
    """Load an SAE by release and id, or from a local SAE-Lens folder.

    ``release`` is a release registered by a plugin (e.g. the demo release
    ``"sae-lens-ext/demo"``), a local folder (with ``sae_id`` naming a
    sub-folder, or None), a release in SAE-Lens's directory, or a Hugging
    Face repo id laid out in SAE-Lens format (``sae_id`` is the folder).
    """
    releases = get_registry().releases()
    if release in releases:
        return load_sae_folder(
            release_sae_path(releases[release], sae_id), device=device, dtype=dtype
        )
    local = Path(release).expanduser()
    if local.is_dir():
        folder = local / sae_id if sae_id else local
        return load_sae_folder(folder, device=device, dtype=dtype)
    return _load_from_sae_lens(release, sae_id, releases, device=device, dtype=dtype)


def release_sae_path(release: Release, sae_id: str | None) -> Path:
    """The folder of ``sae_id`` in a registered release (its default if None)."""
    sae_id = sae_id or release.default_sae_id
    if sae_id not in release.saes:
        raise SAELoadError(
            unknown_name_message(
                f"SAE id in {release.name}", str(sae_id), list(release.saes)
            )
        )
    return release.saes[sae_id]


def load_sae_folder(folder: Path, *, device: str = "cpu", dtype=None) -> SAE:
    """Load an SAE-Lens format folder, with clear errors for broken files."""
    from sae_lens import SAE
    from safetensors import SafetensorError

    folder = Path(folder)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise SAELoadError(
                f"{folder} has no {name}: an SAE-Lens SAE folder needs {CONFIG_FILE} "
                f"and {WEIGHTS_FILE} (write them with sae.save_model(folder))."
            )
    try:
        raw_cfg = json.loads((folder / CONFIG_FILE).read_text())
        architecture = raw_cfg.get("architecture", "standard")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise SAELoadError(
            f"{folder / CONFIG_FILE} is not valid JSON ({exc}); re-save the SAE "
            "with sae.save_model(folder) or download it again."
        ) from exc
    _require_architecture(architecture, folder)
    try:
        sae = SAE.load_from_disk(folder, device=device, dtype=dtype)
    except SafetensorError as exc:
        raise SAELoadError(
            f"{folder / WEIGHTS_FILE} is corrupt or truncated ({exc}); re-save the "
            "SAE with sae.save_model(folder) or download it again."
        ) from exc
    check_sae_weights(sae, str(folder / WEIGHTS_FILE))
    fill_legacy_metadata(sae, raw_cfg, folder)
    return sae


def _require_architecture(architecture: str, where: Path | str) -> None:
    from sae_lens.registry import SAE_CLASS_REGISTRY

    get_registry().register_architectures()
    if architecture not in SAE_CLASS_REGISTRY:
        raise SAELoadError(
            f"{where} uses SAE architecture {architecture!r}, which no installed "
            "package registers. Install the plugin that provides it (see "
            "`sae-lens-ext plugins`)."
        )


def _load_from_sae_lens(release, sae_id, releases, *, device, dtype) -> SAE:
    from sae_lens import SAE
    from sae_lens.loading.pretrained_saes_directory import (
        get_pretrained_saes_directory,
    )

    directory = get_pretrained_saes_directory()
    if release in directory:
        known_ids = list(directory[release].saes_map)
        if sae_id not in known_ids:
            raise SAELoadError(
                unknown_name_message(f"SAE id in {release}", str(sae_id), known_ids)
            )
    elif "/" not in release:
        raise SAELoadError(
            unknown_name_message("release", release, [*releases, *directory])
            + " A Hugging Face repo id (owner/name) or a local folder also works."
        )
    if sae_id is None:
        raise SAELoadError(f"Give an SAE id (the folder inside {release}).")
    try:
        sae = SAE.from_pretrained(
            release, sae_id, device=device, dtype=dtype or "float32"
        )
        check_sae_weights(sae, f"{release} / {sae_id}")
        if release not in directory:
            fill_legacy_metadata(
                sae, _hub_config(release, sae_id), f"{release}/{sae_id}"
            )
        return sae
    except InputError:
        raise
    except Exception as exc:
        if release in directory:
            raise
        raise SAELoadError(
            f"Could not load {release!r} / {sae_id!r} from the Hugging Face Hub "
            f"({type(exc).__name__}: {exc}). Check the repo id and folder, your "
            "network (or HF_HUB_OFFLINE with a filled cache), and "
            f"{unknown_name_message('release', release, list(releases))}"
        ) from exc


def _hub_config(repo_id: str, sae_id: str) -> dict:
    """The raw cfg.json of ``sae_id`` in a Hub repo (already in the local cache)."""
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(repo_id, f"{sae_id.strip('/')}/{CONFIG_FILE}")
    return json.loads(Path(path).read_text())


def load_model_for_sae(
    sae: SAE, release: str | None = None, *, device: str = "cpu"
) -> HookedTransformer:
    """Load the model an SAE was trained on (see :func:`.models.model_for_sae`).

    A release registered with a ``load_model`` (or one that provides the
    model the SAE's metadata names) builds its own model; otherwise the
    metadata's ``model_name`` is resolved like ``--model``.
    """
    from .models import model_for_sae

    model = model_for_sae(sae, release, device=device)
    if model is None:
        raise SAELoadError(
            "The SAE's cfg.json has no metadata.model_name, so its model is "
            "unknown. Add model_name (and hook_name) to the metadata, or pass "
            "model=... to run()."
        )
    return model
