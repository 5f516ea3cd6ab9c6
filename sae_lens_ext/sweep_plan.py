"""Which SAEs a sweep covers, and how they are grouped to share model passes.

SAEs are grouped by what their activations depend on: the model, the
context size and whether sequences start with BOS.  One group shares one
forward pass per batch, which captures every hook its SAEs read.  A group
whose estimated memory exceeds the budget is split (see
:func:`estimate_group_bytes`).
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import RunError
from .loading import load_sae
from .plugins import get_registry, unknown_name_message

# Resident bytes per SAE weight byte while a group runs: the weights, plus
# the analyses' per-latent state, which is of the same order for the
# built-in plugins (absorption's encoder/decoder comparison and the
# meta-SAE keep decoder-sized tensors).  A documented estimate, not a bound.
STATE_PER_WEIGHT = 3
# Bytes per float of the per-batch tensors (fp32).
FLOAT_BYTES = 4
# The architecture recorded for an SAE that could not be loaded.
UNLOADABLE = "unloadable"


@dataclass(frozen=True)
class SweepSAE:
    """One SAE of a sweep: where it comes from and what its pass needs."""

    release: str
    sae_id: str
    hook_name: str | None
    model_name: str | None
    d_in: int
    d_sae: int
    architecture: str
    context_size: int | None
    prepend_bos: bool | None
    weight_bytes: int

    @classmethod
    def unloadable(cls, release: str, sae_id: str) -> SweepSAE:
        """A placeholder for an SAE that failed to load (it is recorded, not run)."""
        return cls(release, sae_id, None, None, 0, 0, UNLOADABLE, None, None, 0)

    @property
    def slug(self) -> str:
        """The SAE's folder name in the sweep directory (and in a pushed repo)."""
        return sae_slug(self.sae_id)

    @property
    def group_key(self) -> tuple:
        """SAEs with the same key can share one model pass."""
        return (self.model_name, self.context_size, self.prepend_bos)


def sae_slug(sae_id: str) -> str:
    """A folder name for an SAE id: letters, digits, '.', '_', '-' only."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", sae_id).strip("-.")
    return slug or "sae"


def check_slugs(sae_ids: list[str]) -> None:
    """Refuse SAE ids that would share a folder of the sweep directory."""
    seen: dict[str, str] = {}
    for sae_id in sae_ids:
        other = seen.setdefault(sae_slug(sae_id), sae_id)
        if other != sae_id:
            raise RunError(
                f"SAE ids {other!r} and {sae_id!r} both map to the folder "
                f"{sae_slug(sae_id)!r}; sweep them separately (--sae-ids)"
            )


def release_sae_ids(release: str) -> list[str]:
    """Every SAE id of a release registered by a plugin or in SAE-Lens's directory."""
    registered = get_registry().releases().get(release)
    if registered is not None:
        return list(registered.saes)
    from sae_lens.loading.pretrained_saes_directory import (
        get_pretrained_saes_directory,
    )

    directory = get_pretrained_saes_directory()
    if release in directory:
        return list(directory[release].saes_map)
    local = Path(release).expanduser()
    if local.is_dir():
        return sorted(p.parent.name for p in local.glob("*/cfg.json"))
    raise RunError(
        unknown_name_message("release", release, list(get_registry().releases()))
        + " A sweep lists a release's SAEs: name a registered release, one in "
        "SAE-Lens's directory, or a folder of SAE-Lens SAE folders; or pass "
        "--sae-ids as a comma-separated list for any other release."
    )


def select_sae_ids(release: str, sae_ids: str | list[str] | None) -> list[str]:
    """The SAE ids to sweep: all of the release, a list, or a glob pattern.

    A string may be a comma-separated list of ids and ``fnmatch`` patterns
    (``'resid0-topk-*'``).  A list is taken as ids (checked against the
    release when its ids can be listed).  Fails before any work when
    nothing matches or an id is unknown.
    """
    if isinstance(sae_ids, str):
        patterns = [p.strip() for p in sae_ids.split(",") if p.strip()]
    else:
        patterns = list(sae_ids) if sae_ids else []
    if not patterns:
        return release_sae_ids(release)
    if not any(set(p) & set("*?[") for p in patterns) and not isinstance(sae_ids, str):
        known = _listable_ids(release)
        for sae_id in patterns:
            if known is not None and sae_id not in known:
                raise RunError(
                    unknown_name_message(f"SAE id in {release}", sae_id, known)
                )
        return list(dict.fromkeys(patterns))
    known = release_sae_ids(release)
    chosen = [
        sae_id
        for sae_id in known
        if any(fnmatch.fnmatchcase(sae_id, p) for p in patterns)
    ]
    if not chosen:
        raise RunError(
            f"--sae-ids {','.join(patterns)!r} matches no SAE of {release}; "
            + unknown_name_message(f"SAE id in {release}", patterns[0], known)
        )
    return chosen


def _listable_ids(release: str) -> list[str] | None:
    try:
        return release_sae_ids(release)
    except RunError:
        return None


def describe_sae(release: str, sae_id: str, sae=None) -> SweepSAE:
    """What the planner needs to know about one SAE (loads it when not given)."""
    sae = sae if sae is not None else load_sae(release, sae_id)
    metadata = sae.cfg.metadata
    weight_bytes = sum(p.numel() * p.element_size() for p in sae.parameters())
    return SweepSAE(
        release=release,
        sae_id=sae_id,
        hook_name=metadata.hook_name,
        model_name=metadata.model_name,
        d_in=sae.cfg.d_in,
        d_sae=sae.cfg.d_sae,
        architecture=sae.cfg.architecture(),
        context_size=metadata.context_size,
        prepend_bos=metadata.prepend_bos,
        weight_bytes=weight_bytes,
    )


def estimate_group_bytes(saes: list[SweepSAE], batch_rows: int) -> int:
    """Estimated peak memory of one group's pass, in bytes.

    Resident for the whole pass: each SAE's weights and analysis state
    (``STATE_PER_WEIGHT`` x its weight bytes).  Per batch: the activations
    of every hook the group reads, plus one SAE's ``sae_in``, ``feature_acts``
    and ``sae_out`` at a time (SAEs are fed one after another).
    """
    resident = sum(STATE_PER_WEIGHT * s.weight_bytes for s in saes)
    hooks = {s.hook_name: s.d_in for s in saes}
    hook_batch = sum(batch_rows * d_in * FLOAT_BYTES for d_in in hooks.values())
    widest = max((batch_rows * (2 * s.d_in + s.d_sae) for s in saes), default=0)
    return resident + hook_batch + widest * FLOAT_BYTES


def plan_groups(
    saes: list[SweepSAE], batch_rows: int, budget_bytes: int
) -> list[list[SweepSAE]]:
    """Group SAEs that can share a model pass, splitting groups over budget.

    Within a model, SAEs are taken in the order given (keeping SAEs of one
    hook together); a group is closed when adding the next SAE would take
    its estimate over ``budget_bytes``.  An SAE over budget alone still
    runs, in a group of its own.
    """
    by_key: dict[tuple, list[SweepSAE]] = {}
    for sae in saes:
        by_key.setdefault(sae.group_key, []).append(sae)
    groups = []
    for members in by_key.values():
        members = sorted(members, key=lambda s: str(s.hook_name))
        current: list[SweepSAE] = []
        for sae in members:
            if (
                current
                and estimate_group_bytes([*current, sae], batch_rows) > budget_bytes
            ):
                groups.append(current)
                current = []
            current.append(sae)
        groups.append(current)
    return groups


def default_budget_bytes(device: str) -> int:
    """Half the free memory of the device the pass runs on."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return free // 2
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        free = 8 << 30
    return free // 2
