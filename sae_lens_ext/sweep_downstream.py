"""A sweep's spliced CE passes: one clean and one ablated pass for all SAEs at a hook.

The base analysis of every SAE measures CE loss and KL divergence with its
SAE spliced in, on the first batches of the pass.  In a sweep those batches
are the same for every SAE of a group, so the clean and zero-ablated passes
are the same too: :func:`share_downstream` runs them once per hook
(:func:`~sae_lens_ext.downstream.downstream_metrics_many`) and hands each
base analysis its metrics, which equal those of its own computation.  An
SAE left out (other tokens, a failed analysis) or a failure here leaves
each base analysis to compute its own when it finishes, so one SAE's
failure stays its own.
"""

from __future__ import annotations

import torch

from .base_analysis import BaseAnalysis
from .downstream import downstream_metrics_many


def share_downstream(jobs) -> int:
    """Give the jobs' base analyses their CE metrics, shared per hook; how many."""
    groups: dict[str, list] = {}  # a group's SAEs share one model
    for job in jobs:
        base = job.analyses.get("base")
        if not isinstance(base, BaseAnalysis) or "base" in job.failed:
            continue
        inputs = base.ce_inputs()
        if inputs is None:
            continue
        members = groups.setdefault(base.context.hook_name, [])
        if not members or same_inputs(members[0][1], inputs):
            members.append((base, inputs))
    shared = 0
    for hook_name, members in groups.items():
        if len(members) < 2:
            continue
        first, (tokens, mask) = members[0]
        try:
            results = downstream_metrics_many(
                first.context.model,
                [base.context.sae for base, _ in members],
                hook_name,
                tokens,
                mask,
            )
        except Exception:  # each SAE computes (and fails) on its own at finish
            continue
        for (base, _), metrics in zip(members, results, strict=True):
            base.use_downstream(metrics)
        shared += len(members)
    return shared


def same_inputs(left: tuple, right: tuple) -> bool:
    """Whether two ``(tokens, mask)`` pairs are equal."""
    return all(
        a.shape == b.shape and torch.equal(a.cpu(), b.cpu())
        for a, b in zip(left, right, strict=True)
    )
