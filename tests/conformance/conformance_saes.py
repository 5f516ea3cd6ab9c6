"""SAEs unlike the demo's, their activations, and brute-force references.

Every case is an SAE of an architecture in SAE-Lens's registry (after our
plugins register theirs), with random weights chosen to break shortcuts:
decoder row norms spread over 0.5-2, a nonzero ``b_dec``, a negative
``b_enc`` so codes are sparse.  A case varies one or more of the config
fields that change the math (see :func:`cases`).

The references use only SAE-Lens's public ``encode`` / ``decode`` /
``forward``, called on the SAE the way SAE-Lens itself would be (a
``hook_z`` SAE gets ``[n, n_heads, d_head]`` input, a tokenized SAE its
bound tokens), with the arithmetic on the outputs in float64.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import tempfile
import typing
from functools import cache

import torch
from sae_lens.registry import SAE_CLASS_REGISTRY
from sae_lens.saes.sae import SAEConfig

from sae_lens_ext.plugins import get_registry
from sae_lens_ext.reconstruction import IDENTITY_NORMALIZATIONS, ROW_NORMALIZATIONS
from sae_lens_ext.shared_pass import HookActivations, run_shared_pass

D_IN, D_SAE, K = 16, 48, 4
N_HEADS = 4  # hook_z cases: 4 heads of width 4
N_SEQ, SEQ_LEN, VOCAB = 8, 24, 32
HOOK = "blocks.0.hook_resid_post"
HOOK_Z = "blocks.0.attn.hook_z"

# Tolerances by the SAE's dtype, relative to the compared quantity.  The
# plugins take the SAE's own encode/decode outputs (rounded to the SAE's
# dtype) and do their arithmetic in float32/float64; the references call
# SAE-Lens again, so the two differ by the SAE dtype's rounding of the
# reconstruction and of sums in that dtype: unit roundoff u = 2^-24 (fp32),
# 2^-11 = 4.9e-4 (fp16), 2^-8 = 3.9e-3 (bf16), times a small factor (a squared
# error doubles a relative rounding; |reconstruction| / |error| is ~1-3 on
# these random SAEs).  Largest seen on these cases: 2.8e-3 (bf16) and 6e-4
# (fp16), the LLC loss summed in the SAE's dtype.  Float32 sums of 192 x 16
# terms: ~1e-6.
# the cached cases' run folders, under one directory removed when the interpreter exits
RUN_DIRS = tempfile.TemporaryDirectory(prefix="conformance-")

RTOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def architectures() -> list[str]:
    """Every inference architecture registered, ours included."""
    get_registry()  # plugins register their architectures on load
    return sorted(SAE_CLASS_REGISTRY)


@cache
def refused_architectures() -> list[str]:
    """Registered architectures the host refuses as not reconstructing their
    input (transcoders, temporal SAEs): asserted to say so, in
    test_conformance_unsupported."""
    from sae_lens_ext import UnsupportedSAEError, require_reconstruction

    refused = []
    for arch in architectures():
        try:
            require_reconstruction(build_sae(Case(arch)), "base")
        except UnsupportedSAEError:
            refused.append(arch)
    return refused


def normalization_modes() -> list[str]:
    """Every ``normalize_activations`` mode SAE-Lens's config names."""
    hinted = typing.get_args(typing.get_type_hints(SAEConfig)["normalize_activations"])
    return sorted(set(hinted) | IDENTITY_NORMALIZATIONS | ROW_NORMALIZATIONS)


@dataclasses.dataclass(frozen=True)
class Case:
    """One SAE configuration."""

    architecture: str
    dtype: torch.dtype = torch.float32
    normalize: str = "none"
    rescale: bool = False
    apply_b_dec_to_input: bool = True
    hook_z: bool = False

    @property
    def id(self) -> str:
        """A readable test id."""
        parts = [self.architecture, str(self.dtype).removeprefix("torch.")]
        if self.normalize != "none":
            parts.append(self.normalize)
        if self.rescale:
            parts.append("rescale")
        if not self.apply_b_dec_to_input:
            parts.append("no_b_dec_in")
        if self.hook_z:
            parts.append("hook_z")
        return "-".join(parts)


def _has_rescale(architecture: str) -> bool:
    cfg_class = SAE_CLASS_REGISTRY[architecture][1]
    names = {f.name for f in dataclasses.fields(cfg_class)}
    return "rescale_acts_by_decoder_norm" in names


def cases() -> list[Case]:
    """Each reconstruction architecture crossed with each math-changing field.

    Per architecture: a plain float32 case; each normalisation mode; no
    ``b_dec`` on the input; ``hook_z`` reshaping; fp16 and bf16 weights;
    where the config has it, ``rescale_acts_by_decoder_norm`` alone and in a
    stress combination with layer norm, bf16 and ``hook_z``.  Decoder norms
    are 0.5-2 and ``b_dec`` nonzero in every case.
    """
    found = []
    for arch in architectures():
        if arch in refused_architectures():
            continue
        variants = [
            Case(arch),
            *(Case(arch, normalize=m) for m in normalization_modes() if m != "none"),
            Case(arch, apply_b_dec_to_input=False),
            Case(arch, hook_z=True),
            Case(arch, dtype=torch.float16),
            Case(arch, dtype=torch.bfloat16),
        ]
        if _has_rescale(arch):
            variants += [
                Case(arch, rescale=True),
                Case(
                    arch,
                    dtype=torch.bfloat16,
                    normalize="layer_norm",
                    rescale=True,
                    hook_z=True,
                ),
            ]
        found += [case for case in variants if valid_case(case)]
    return found


def valid_case(case: Case) -> bool:
    """Whether the architecture's own config accepts the case (a tokenized
    SAE, for one, refuses any activation normalisation)."""
    try:
        _config(case, case.architecture)
    except ValueError:
        return False
    return True


def _config(case: Case, architecture: str, d_in: int = D_IN):
    cfg_class = SAE_CLASS_REGISTRY[architecture][1]
    names = {f.name for f in dataclasses.fields(cfg_class)}
    options = {
        "d_in": d_in,
        "d_sae": D_SAE,
        "apply_b_dec_to_input": case.apply_b_dec_to_input,
        "normalize_activations": case.normalize,
        "reshape_activations": "hook_z" if case.hook_z else "none",
    }
    extra = {
        "k": K,
        "rescale_acts_by_decoder_norm": case.rescale,
        "base_architecture": "topk",
        "vocab_size": VOCAB,
        "d_out": d_in + 4,
        "n_heads": 2,
        "bottleneck_factor": 4,
        "kval_topk": K,
        "max_iterations": 6,
    }
    options.update({k: v for k, v in extra.items() if k in names})
    if "d_out" in names:
        options["apply_b_dec_to_input"] = False
    cfg = cfg_class(**options)
    cfg.metadata.hook_name = HOOK_Z if case.hook_z else HOOK
    return cfg


@torch.no_grad()
def _randomise(sae, seed: int) -> None:
    """Weights that break shortcuts: decoder norms 0.5-2, nonzero b_dec."""
    gen = torch.Generator().manual_seed(seed)
    for name, param in sae.named_parameters():
        shape = param.shape
        if name == "W_dec":
            rows = torch.randn(shape, generator=gen)
            norms = 0.5 + 1.5 * torch.rand(shape[0], 1, generator=gen)
            value = rows / rows.norm(dim=1, keepdim=True) * norms
        elif name == "W_enc":
            value = torch.randn(shape, generator=gen) / math.sqrt(shape[0])
        elif name in ("b_enc", "b_gate", "b_mag"):
            value = -0.3 + 0.2 * torch.randn(shape, generator=gen)
        elif name == "threshold":
            value = 0.05 + 0.3 * torch.rand(shape, generator=gen)
        elif name == "b_dec":
            value = 0.5 * torch.randn(shape, generator=gen)
        else:
            value = 0.2 * torch.randn(shape, generator=gen)
        param.copy_(value.to(param.dtype))


def build_sae(case: Case, seed: int = 0, d_in: int = D_IN):
    """The case's SAE, in its dtype."""
    sae_class = SAE_CLASS_REGISTRY[case.architecture][0]
    sae = sae_class(_config(case, case.architecture, d_in))
    _randomise(sae, seed)
    return sae.to(case.dtype)


def activations(seed: int = 1):
    """Rows ``[n, d_in]`` (float32), their token ids and (sequence, position)."""
    gen = torch.Generator().manual_seed(seed)
    n = N_SEQ * SEQ_LEN
    x = 0.3 + torch.randn(n, D_IN, generator=gen) * (
        0.5 + torch.rand(n, 1, generator=gen)
    )
    token_context = torch.randint(0, VOCAB, (N_SEQ, SEQ_LEN), generator=gen)
    positions = torch.stack(
        [
            torch.arange(N_SEQ).repeat_interleave(SEQ_LEN),
            torch.arange(SEQ_LEN).repeat(N_SEQ),
        ],
        dim=1,
    )
    return x, token_context, positions


def bound_tokens(sae, tokens: torch.Tensor):
    """A tokenized SAE's token binding for the rows; a no-op for others."""
    if hasattr(sae, "using_tokens"):
        return sae.using_tokens(tokens)
    return contextlib.nullcontext()


@dataclasses.dataclass
class Reference:
    """Brute-force numbers from SAE-Lens's encode/decode/forward."""

    sae_in: torch.Tensor  # [n, d_in] float64 of the rows the SAE sees
    codes: torch.Tensor  # [n, d_sae] float64
    forward: torch.Tensor  # [n, d_in] float64

    @property
    def mse(self) -> float:
        """Mean squared error per element."""
        return float((self.sae_in - self.forward).pow(2).mean())


class SAECalls:
    """SAE-Lens's public calls on one case's SAE, on native-shaped input."""

    def __init__(self, case: Case, sae, tokens: torch.Tensor):
        self.case, self.sae, self.tokens = case, sae, tokens

    def native(self, x: torch.Tensor) -> torch.Tensor:
        """Rows as SAE-Lens takes them (``[n, n_heads, d_head]`` for hook_z)."""
        x = x.to(self.sae.W_dec.dtype)
        return x.view(x.shape[0], N_HEADS, -1) if self.case.hook_z else x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``sae.encode`` of the rows, as float64."""
        with torch.no_grad(), bound_tokens(self.sae, self.tokens[: len(x)]):
            return self.sae.encode(self.native(x)).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``sae.forward`` of the rows, flattened, as float64."""
        with torch.no_grad(), bound_tokens(self.sae, self.tokens[: len(x)]):
            return self.sae(self.native(x)).reshape(len(x), -1).double()

    def decode_after_encode(self, x: torch.Tensor, codes: torch.Tensor):
        """``sae.decode(codes)`` right after ``sae.encode(x)`` (normalisations
        keep the input's per-row statistics from encode), float64 rows."""
        with torch.no_grad(), bound_tokens(self.sae, self.tokens[: len(x)]):
            self.sae.encode(self.native(x))
            out = self.sae.decode(codes.to(self.sae.W_dec.dtype))
        return out.reshape(len(x), -1).double()


def reference(case: Case, sae, x: torch.Tensor, tokens: torch.Tensor) -> Reference:
    """Codes and outputs of SAE-Lens on the rows, without any plugin code."""
    calls = SAECalls(case, sae, tokens)
    seen = x.to(sae.W_dec.dtype).double()
    return Reference(seen, calls.encode(x), calls.forward(x))


def float64_copy(sae):
    """The same weights in float64 (exact: every half value is a double),
    built afresh from the config (not every SAE class deep-copies)."""
    cfg = copy.copy(sae.cfg)
    cfg.dtype = "float64"
    twin = SAE_CLASS_REGISTRY[cfg.architecture()][0](cfg)
    twin.load_state_dict({k: v.double() for k, v in sae.state_dict().items()})
    return twin


@dataclasses.dataclass
class PassOutputs:
    """What the plugins computed in one shared pass over a case."""

    base: dict  # the base analysis's metrics
    mdl: object  # DescriptionLength
    absorption: object  # the DiscrepancyAccumulator after the pass


MDL_OPTIONS = {"finest_precision": 2**-4, "n_precisions": 5}


@cache
def run_case(case: Case):
    """The case's SAE, rows and every plugin's numbers from one shared pass."""
    from pathlib import Path
    from unittest import mock

    from sae_lens_ext_absorption.discrepancy import DiscrepancyAccumulator
    from sae_lens_ext_mdl.analysis import MDLAnalysis
    from sae_lens_ext_mdl.description_length import MDLConfig

    from sae_lens_ext.analysis import RunContext
    from sae_lens_ext.base_analysis import BaseAnalysis, BaseConfig

    sae = build_sae(case)
    x, token_context, positions = activations()
    tokens = token_context.reshape(-1)
    out_dir = Path(RUN_DIRS.name) / case.id
    out_dir.mkdir()
    context = RunContext(sae=sae, release="conformance", sae_id="case", out_dir=out_dir)
    base = BaseAnalysis(BaseConfig(ce_batches=0), context)
    mdl = MDLAnalysis(MDLConfig(**MDL_OPTIONS), context)
    absorption = DiscrepancyAccumulator(sae, absorption_config())
    batch = HookActivations(x, token_context, positions)
    with bound_tokens(sae, tokens):
        run_shared_pass(sae, [base, mdl, absorption], [batch], hook_name=HOOK)
    # the numbers, not the plots (drawing them is most of the time here)
    with mock.patch("sae_lens_ext.base_analysis.density_plot"):
        base_metrics = base.finish().metrics
    return (
        sae,
        x,
        tokens,
        PassOutputs(base_metrics, mdl.accumulator.result(), absorption),
    )


def absorption_config():
    """Small top-N lists so every latent's lists are full on 192 rows."""
    from sae_lens_ext_absorption.config import AbsorptionConfig

    return AbsorptionConfig(top_n=8, codes_per_row=D_SAE, letters=False)


class Float64Calls(SAECalls):
    """SAE-Lens's calls on a float64 copy of the case's SAE: its decoder math
    without the SAE dtype's rounding (the codes still come from the SAE)."""

    def __init__(self, case: Case, sae, tokens: torch.Tensor):
        super().__init__(case, float64_copy(sae), tokens)

    def decode_rows(self, x: torch.Tensor, codes: torch.Tensor, tokens=None):
        """``decode(codes[r])`` right after ``encode(x[r])``, per row."""
        bound = self.tokens if tokens is None else tokens
        with torch.no_grad(), bound_tokens(self.sae, bound):
            if self.case.normalize in ROW_NORMALIZATIONS or self.case.hook_z:
                # decode reads what encode kept: the per-row statistics of
                # these modes, hook_z's head width (others keep nothing, and
                # matching pursuit's encode is slow)
                self.sae.encode(self.native(x))
            out = self.sae.decode(codes.double())
        return out.reshape(len(x), -1)

    def directions(self, x: torch.Tensor) -> torch.Tensor:
        """Unit direction each latent moves the reconstruction in ``[d_sae, d_in]``:
        ``decode(e_i) - decode(0)`` on one row (any row: a normalisation only
        scales it by a positive number)."""
        rows = x[:1].expand(D_SAE + 1, -1)
        codes = torch.cat([torch.eye(D_SAE), torch.zeros(1, D_SAE)]).double()
        tokens = self.tokens[:1].expand(D_SAE + 1)
        out = self.decode_rows(rows, codes, tokens)
        moves = out[:-1] - out[-1]
        return moves / moves.norm(dim=1, keepdim=True)

    def contributions(self, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """``[n, d_sae, d_in]``: what each latent adds to each row's
        reconstruction, ``decode(f) - decode(f without it)``."""
        n = len(x)
        without = codes[:, None, :].repeat(1, D_SAE, 1)
        without[:, torch.arange(D_SAE), torch.arange(D_SAE)] = 0.0
        rows = x.repeat_interleave(D_SAE, dim=0)
        tokens = self.tokens.repeat_interleave(D_SAE)
        dropped = self.decode_rows(rows, without.reshape(n * D_SAE, D_SAE), tokens)
        full = self.decode_rows(x, codes)
        return full[:, None, :] - dropped.view(n, D_SAE, -1)

    def zero_code(self, x: torch.Tensor) -> torch.Tensor:
        """``decode(0)`` per row ``[n, d_in]``."""
        return self.decode_rows(x, torch.zeros(len(x), D_SAE))
