"""SAE configs written without ``metadata.sae_lens_version`` (the pre-6 layout).

SAE-Lens 6 reads such a ``cfg.json`` as a legacy config: it takes
``model_name``, ``hook_name`` and the rest from the top-level keys and
ignores a ``metadata`` block, so a config that keeps them only in
``metadata`` loads with ``hook_name`` and ``model_name`` set to None.  The
host fills them from whichever layout has them and warns once per folder;
what neither layout has is named in the warning, never silently None.
"""

from __future__ import annotations

import warnings
from pathlib import Path

REQUIRED = ("model_name", "hook_name")
_warned: set[str] = set()


class LegacyConfigWarning(UserWarning):
    """An SAE's cfg.json is in the pre-SAE-Lens-6 layout."""


def is_legacy(raw_cfg: dict) -> bool:
    """Whether SAE-Lens reads this cfg.json as a legacy (pre-6) config."""
    metadata = raw_cfg.get("metadata")
    return not (isinstance(metadata, dict) and "sae_lens_version" in metadata)


def fill_legacy_metadata(sae, raw_cfg: dict, where: Path | str) -> None:
    """Fill metadata SAE-Lens left None from either layout of a legacy cfg.json."""
    if not is_legacy(raw_cfg):
        return
    nested = (
        raw_cfg.get("metadata") if isinstance(raw_cfg.get("metadata"), dict) else {}
    )
    metadata = sae.cfg.metadata
    filled = []
    for key in sorted(set(raw_cfg) | set(nested)):
        if key == "metadata" or not hasattr(metadata, key):
            continue
        if getattr(metadata, key) is None:
            value = raw_cfg.get(key, nested.get(key))
            if value is not None:
                setattr(metadata, key, value)
                filled.append(key)
    missing = [key for key in REQUIRED if not getattr(metadata, key, None)]
    if str(where) in _warned:
        return
    _warned.add(str(where))
    found = ", ".join(
        f"{k}={getattr(metadata, k)!r}" for k in REQUIRED if k not in missing
    )
    message = (
        f"{where}: cfg.json has no metadata.sae_lens_version, so it is read as a "
        f"pre-SAE-Lens-6 config ({found or 'no model or hook named'})"
    )
    if missing:
        message += (
            f"; it names no {' or '.join(missing)}, so add "
            f"{', '.join(missing)} to cfg.json"
        )
    warnings.warn(
        message + ". Re-save the SAE with sae.save_model(folder) to update it.",
        LegacyConfigWarning,
        stacklevel=3,
    )
