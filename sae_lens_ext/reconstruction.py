"""How an SAE-Lens SAE's reconstruction depends on its code, for shortcuts.

Analyses that move a few latents of a code (quantise them, drop one, score
its share of a projection) need ``decode(f') - decode(f)`` without a dense
decode per variant.  For SAE-Lens's inference architectures with a linear
decoder, :func:`code_map` gives the exact form

    decode(f)[r] = scale[r] * (f[r] @ rows + bias) + shift[r]

where ``rows`` is ``W_dec`` divided by its row norms when
``rescale_acts_by_decoder_norm`` is set, and ``scale``/``shift`` come from
the ``normalize_activations`` mode (``constant_norm_rescale``: the input's
norm over sqrt(d_in); ``layer_norm``: its standard deviation and mean; the
other modes are the identity at inference).  Architectures whose
reconstruction is not ``decode(encode(x))`` of its input are refused by
:func:`require_reconstruction` with the reason; others get ``None`` from
:func:`code_map`, and callers fall back to SAE-Lens's own
``encode``/``decode``.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch

# inference architectures whose decode is ``f @ W_dec (+ b_dec)`` (with
# ``f`` divided by the decoder norms where rescaling is on), then the
# output normalisation
LINEAR_DECODERS = {
    "standard",
    "gated",
    "jumprelu",
    "topk",
    "abstopk",
    "matching_pursuit",
}
# normalize_activations modes that SAE-Lens applies as the identity at
# inference (their factors are folded into the weights)
IDENTITY_NORMALIZATIONS = {"none", "expected_average_only_in", "covariance_whitening"}
ROW_NORMALIZATIONS = {"constant_norm_rescale", "layer_norm"}

_NOT_RECONSTRUCTIONS = {
    "transcoder": "its decoder writes another hook's activations (d_out), so "
    "it does not reconstruct its input",
    "temporal": "its output adds codes predicted from earlier positions "
    "(forward(x) is not decode(encode(x))) and its encoder needs whole "
    "sequences, not rows of activations",
}


class UnsupportedSAEError(ValueError):
    """An analysis cannot work on this SAE's architecture; the message says why."""


def _kind(sae) -> str:
    architecture = sae.cfg.architecture()
    if hasattr(sae.cfg, "d_out") or "transcoder" in architecture:
        return "transcoder"
    return architecture


def require_reconstruction(sae, analysis: str) -> None:
    """Raise UnsupportedSAEError if ``sae`` does not reconstruct its input.

    ``analysis`` names the analysis in the message, which also says how to
    leave it out of a run.
    """
    reason = _NOT_RECONSTRUCTIONS.get(_kind(sae))
    if reason is None:
        return
    raise UnsupportedSAEError(
        f"{analysis} does not support SAE-Lens architecture "
        f"{sae.cfg.architecture()!r}: {reason}. Leave it out with "
        f"`-p no:{analysis}` (Python: plugins=['no:{analysis}'])."
    )


@dataclass
class CodeMap:
    """``decode(f) = scale * (f @ rows + bias) + shift`` for one SAE."""

    rows: torch.Tensor  # [d_sae, d_out], float64
    bias: torch.Tensor  # [d_out], float64
    normalization: str
    d_in: int
    # a subclass that may add code-independent terms: decode(0) through it
    subclass_sae: object = None

    @property
    def row_norms(self) -> torch.Tensor:
        """Length of each latent's contribution per unit of its activation."""
        return self.rows.norm(dim=1)

    def row_scale(self, sae_in: torch.Tensor) -> torch.Tensor | None:
        """Per-row output scale ``[n]`` (float64), or None where it is 1."""
        if self.normalization in IDENTITY_NORMALIZATIONS:
            return None
        x = sae_in.double().reshape(sae_in.shape[0], -1)
        if self.normalization == "constant_norm_rescale":
            return x.norm(dim=-1) / math.sqrt(self.d_in)
        return (x - x.mean(dim=-1, keepdim=True)).std(dim=-1)

    def zero_code(self, sae_in: torch.Tensor) -> torch.Tensor:
        """``decode(0)`` for each row ``[n, d_out]`` (float64); ``[d_out]``
        (the same for every row, broadcasting) without a normalisation."""
        if self.subclass_sae is not None:
            return _decode_zero(self.subclass_sae, sae_in, self.normalization)
        scale = self.row_scale(sae_in)
        if scale is None:
            return self.bias
        zero = scale[:, None] * self.bias
        if self.normalization == "layer_norm":
            zero = zero + sae_in.double().mean(dim=-1, keepdim=True)
        return zero

    def moved(
        self,
        sae_in: torch.Tensor,
        row_ids: torch.Tensor,
        latent_ids: torch.Tensor,
        deltas: torch.Tensor,
    ) -> torch.Tensor:
        """``decode(f + delta) - decode(f)`` ``[n, d_out]`` (float64) for a
        sparse ``delta`` given as (row, latent, value) entries."""
        return self.mover(sae_in, row_ids, latent_ids)(deltas)

    def mover(
        self, sae_in: torch.Tensor, row_ids: torch.Tensor, latent_ids: torch.Tensor
    ) -> SparseMover:
        """:meth:`moved` for many ``deltas`` on the same (row, latent) entries."""
        return SparseMover(self, sae_in, row_ids, latent_ids)


class SparseMover:
    """``decode(f + delta) - decode(f)`` for deltas on fixed (row, latent) entries.

    The sparsity pattern, the row scales and the decode rows are prepared
    once; each call is one product of a CSR matrix with the rows (about 5x
    faster on the CPU than a COO product, which sorts its entries on every
    call, with the same sums).  Entries come row-major from ``nonzero()``
    and are sorted if not.
    """

    def __init__(self, code_map, sae_in, row_ids, latent_ids):
        n = sae_in.shape[0]
        self.order = None
        if row_ids.numel() > 1 and bool((row_ids[1:] < row_ids[:-1]).any()):
            self.order = torch.argsort(row_ids, stable=True)
            row_ids, latent_ids = row_ids[self.order], latent_ids[self.order]
        self.row_starts = torch.zeros(n + 1, dtype=torch.long, device=row_ids.device)
        self.row_starts[1:] = torch.bincount(row_ids, minlength=n).cumsum(0)
        self.latent_ids = latent_ids
        self.shape = (n, code_map.rows.shape[0])
        self.rows = code_map.rows.to(row_ids.device)
        self.scale = code_map.row_scale(sae_in)

    def __call__(self, deltas: torch.Tensor) -> torch.Tensor:
        """The move ``[n, d_out]`` (float64) for these entries' ``deltas``."""
        values = deltas.double()
        if self.order is not None:
            values = values[self.order]
        with warnings.catch_warnings():  # "CSR support is in beta state"
            warnings.simplefilter("ignore", UserWarning)
            delta = torch.sparse_csr_tensor(
                self.row_starts,
                self.latent_ids,
                values,
                self.shape,
                check_invariants=False,
            )
        moved = delta @ self.rows
        return moved if self.scale is None else moved * self.scale[:, None]


def code_map(sae) -> CodeMap | None:
    """The affine form of ``sae``'s decode in its code, or None if unknown.

    Known: the architectures in ``LINEAR_DECODERS`` and subclasses of their
    SAE-Lens classes (a subclass may add a term that does not depend on the
    code, such as a token table; the moves of :meth:`CodeMap.moved` are
    unchanged by it).
    """
    from sae_lens import GatedSAE, JumpReLUSAE, StandardSAE, TopKSAE

    cfg = sae.cfg
    linear = cfg.architecture() in LINEAR_DECODERS or isinstance(
        sae, (StandardSAE, GatedSAE, JumpReLUSAE, TopKSAE)
    )
    mode = cfg.normalize_activations
    if not linear or mode not in IDENTITY_NORMALIZATIONS | ROW_NORMALIZATIONS:
        return None
    rows = sae.W_dec.detach().double()
    if getattr(cfg, "rescale_acts_by_decoder_norm", False):
        rows = rows / rows.norm(dim=1, keepdim=True)
    adds_b_dec = cfg.architecture() != "matching_pursuit" or cfg.apply_b_dec_to_input
    bias = (
        sae.b_dec.detach().double()
        if adds_b_dec
        else torch.zeros(rows.shape[1], dtype=rows.dtype, device=rows.device)
    )
    subclass = None if cfg.architecture() in LINEAR_DECODERS else sae
    return CodeMap(rows, bias, mode, cfg.d_in, subclass)


def _decode_zero(sae, sae_in: torch.Tensor, normalization: str) -> torch.Tensor:
    """SAE-Lens's ``decode`` of the zero code for each row (float64)."""
    n = sae_in.shape[0]
    with torch.no_grad():
        if normalization in ROW_NORMALIZATIONS:
            sae.encode(sae_in.to(sae.W_dec.dtype))  # the per-row statistics
        zeros = sae_in.new_zeros(n, sae.cfg.d_sae, dtype=sae.W_dec.dtype)
        return sae.decode(zeros).reshape(n, -1).double()


@contextlib.contextmanager
def flat_rows(sae) -> Iterator[None]:
    """Inside the block, a ``hook_z`` SAE takes and returns flat rows ``[n, d_in]``.

    SAE-Lens's ``hook_z`` reshaping only merges ``(n_heads, d_head)`` into
    ``d_in`` and splits it back, so on rows the math is unchanged; the
    setting is restored on exit.
    """
    if not getattr(sae, "hook_z_reshaping_mode", False):
        yield
        return
    sae.turn_off_forward_pass_hook_z_reshaping()
    try:
        yield
    finally:
        sae.turn_on_forward_pass_hook_z_reshaping()


def head_index(sae) -> int | None:
    """The attention head an SAE was trained on (``hook_head_index``), if any."""
    return getattr(sae.cfg.metadata, "hook_head_index", None)


def select_head(sae, sae_in: torch.Tensor) -> torch.Tensor:
    """The rows of the SAE's head when ``sae_in`` holds every head's, flattened.

    An SAE trained with ``hook_head_index`` saw ``acts[..., head, :]`` of an
    attention hook (``d_in = d_head``), as SAE-Lens's activation store gives
    it; the hook's rows ``[n, n_heads * d_head]`` are cut to that head.
    Anything else is returned unchanged (and a wrong width is reported by
    the caller's width check).
    """
    head, d_in = head_index(sae), sae.cfg.d_in
    width = sae_in.shape[-1]
    if head is None or width == d_in or width % d_in:
        return sae_in
    return sae_in.reshape(sae_in.shape[0], width // d_in, d_in)[:, head]


def splice(sae, acts: torch.Tensor, through) -> torch.Tensor:
    """The hook's activations with the SAE's part replaced by ``through(part)``.

    ``through`` maps the SAE's input to what takes its place (``sae`` itself
    for the SAE's output); for a ``hook_head_index`` SAE only that head of
    ``acts [..., n_heads, d_head]`` is replaced, the others pass unchanged;
    a ``hook_z`` SAE gets the heads flattened, whether or not its reshaping
    is on at the time.
    """
    head, d_in = head_index(sae), sae.cfg.d_in
    dtype = sae.W_dec.dtype
    if head is not None and acts.dim() >= 2 and acts.shape[-1] == d_in:
        out = acts.clone()
        out[..., head, :] = through(acts[..., head, :].to(dtype)).to(acts.dtype)
        return out
    if acts.dim() >= 2 and acts.shape[-1] != d_in == acts.shape[-2:].numel():
        # a hook_z SAE's heads, given to it flat (also inside a shared pass)
        with flat_rows(sae):
            flat = through(acts.flatten(-2).to(dtype))
        return flat.reshape(acts.shape).to(acts.dtype)
    return through(acts.to(dtype)).to(acts.dtype)


def position_mask(token_context: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Boolean ``[n_seq, context]`` mask of the ``(sequence, position)`` rows given.

    ``positions`` is an :class:`~sae_lens_ext.ActivationBatch`'s ``positions``:
    the rows the shared pass kept, so a splice can replace exactly those.
    """
    mask = torch.zeros(token_context.shape, dtype=torch.bool)
    mask[positions[:, 0].cpu(), positions[:, 1].cpu()] = True
    return mask


def at_positions(
    acts: torch.Tensor, replaced: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """``replaced`` where ``mask`` ``[n_seq, context]`` is set, ``acts`` elsewhere.

    With no mask every position is replaced.
    """
    if mask is None:
        return replaced
    where = mask.to(acts.device)
    return torch.where(where.view(*where.shape, *[1] * (acts.ndim - 2)), replaced, acts)
