"""Optional dependencies: import them or say which extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError):
    """An optional dependency is missing; the message names the install command."""


def require(module_name: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module_name`` or raise naming ``pip install 'sae-lens-ext[extra]'``."""
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise MissingExtraError(
            f"{purpose} needs the optional package {module_name!r}: "
            f"pip install 'sae-lens-ext[{extra}]'"
        ) from exc
