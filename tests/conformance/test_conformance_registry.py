"""The suite covers every registered architecture and normalisation mode."""

from __future__ import annotations

import torch
from conformance_saes import (
    Case,
    architectures,
    cases,
    normalization_modes,
    refused_architectures,
    valid_case,
)

from sae_lens_ext.reconstruction import IDENTITY_NORMALIZATIONS, ROW_NORMALIZATIONS


def test_every_registered_architecture_is_checked_or_refused():
    checked = {case.architecture for case in cases()}
    refused = set(refused_architectures())
    assert checked | refused == set(architectures())
    assert not checked & refused
    # SAE-Lens's four classic architectures are among the checked ones
    assert {"standard", "gated", "jumprelu", "topk"} <= checked


def test_every_normalisation_mode_is_known_to_the_host():
    """A new SAE-Lens mode would make the shortcuts fall back, or worse;
    the host must classify it first."""
    assert set(normalization_modes()) == IDENTITY_NORMALIZATIONS | ROW_NORMALIZATIONS


def test_each_checked_architecture_meets_each_field():
    """Every math-changing field appears for every checked architecture,
    unless that architecture's own config refuses it (a tokenized SAE takes
    no normalisation and no hook_z reshaping)."""
    found = set(cases())
    for arch in {case.architecture for case in found}:
        wanted = [
            Case(arch, apply_b_dec_to_input=False),
            Case(arch, hook_z=True),
            Case(arch, dtype=torch.float16),
            Case(arch, dtype=torch.bfloat16),
            *(Case(arch, normalize=mode) for mode in normalization_modes()),
        ]
        for case in wanted:
            assert case in found or not valid_case(case), case.id
    classic = {"standard", "gated", "jumprelu", "topk"}
    assert sum(case.architecture in classic for case in found) >= 4 * 9
