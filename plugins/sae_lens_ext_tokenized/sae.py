"""The ``tokenized`` SAE-Lens architecture: an SAE plus per-token lookup tables.

Reconstruction (Dooms & Wilhelm 2024, with Pearce's upstream-SAE key)::

    x_hat = W_dec f(x) + b_dec + T[token] (+ P[hash(prev, token)]) (+ g @ U)

``g`` is a frozen upstream SAE's code at the same position (computed from an
earlier hook of the same forward pass), ``U`` its table (``lookup`` chooses
``"token"``, ``"upstream_sae"`` or ``"both"``; ``upstream_key="top1"`` uses
the row of the most active upstream latent instead of ``g @ U``).  ``f`` is
the encoder of a base SAE-Lens architecture (``topk``, ``standard`` ReLU or
``jumprelu``): a tokenized SAE *is* that SAE-Lens class with the tables
mixed in, so encoding, auxiliary losses, coefficient schedules and saving are
SAE-Lens's own.  The registered class picks its variant from
``cfg.base_architecture`` when constructed, so ``SAE.load_from_disk`` and
``SAE.from_pretrained`` build the right one.

Token ids reach the SAE explicitly, never through a silent default:

- inference: ``with sae.using_tokens(tokens): sae(acts)`` (or ``set_tokens``),
  or ``sae.capture_tokens(model)`` to take them from a TransformerLens
  model's input on every forward pass (``HookedSAETransformer`` included);
- training: batches packed with :func:`~.keys.pack_tokens` carry them as two
  extra columns through SAE-Lens's unmodified ``SAETrainer`` (and, with
  :class:`~.runner.TokenizedSAETrainingRunner`, through SAE-Lens's
  language-model training runner).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from sae_lens import (
    SAE,
    JumpReLUSAE,
    JumpReLUTrainingSAE,
    SAEConfig,
    StandardSAE,
    StandardTrainingSAE,
    TopKSAE,
    TopKTrainingSAE,
    TrainingSAE,
    TrainingSAEConfig,
)
from sae_lens.saes.sae import TrainStepInput, TrainStepOutput
from torch import nn
from torch.nn import functional
from transformer_lens.hook_points import HookPoint

from .keys import (
    KEY_COLUMNS,
    MissingTokensError,
    TokenKeys,
    make_keys,
    pair_rows,
    split_upstream,
    unpack_tokens,
)
from .upstream import (
    check_upstream_config,
    load_upstream_sae,
    upstream_term,
    uses_token_table,
    uses_upstream,
)

ARCHITECTURE = "tokenized"
BASE_ARCHITECTURES = ("topk", "standard", "jumprelu")


def check_table_config(cfg) -> None:
    """Raise ValueError for settings the tokenized architecture cannot honour."""
    if cfg.base_architecture not in BASE_ARCHITECTURES:
        raise ValueError(
            f"base_architecture={cfg.base_architecture!r} is not supported; choose "
            f"one of {list(BASE_ARCHITECTURES)}"
        )
    check_upstream_config(cfg)
    if cfg.vocab_size < 1:
        raise ValueError(
            "a tokenized SAE needs vocab_size >= 1: set it to the model's "
            "d_vocab (model.cfg.d_vocab)"
        )
    if cfg.pair_buckets < 0:
        raise ValueError("pair_buckets must be >= 0 (0 disables the pair table)")
    if cfg.normalize_activations != "none":
        raise ValueError(
            "a tokenized SAE supports normalize_activations='none' only (the "
            "tables live in the raw activation space); normalise activations "
            "before training instead"
        )
    if cfg.reshape_activations != "none":
        raise ValueError(
            "a tokenized SAE supports reshape_activations='none' only; flatten "
            "hook_z activations to [..., n_heads * d_head] first"
        )


@dataclass
class TokenTableFields:
    """The fields a tokenized SAE's config adds to SAE-Lens's, inference and
    training alike (a dataclass mixin placed before SAE-Lens's config class,
    so SAE-Lens's ``to_dict``/``from_dict`` and ``cfg.json`` see them as
    ordinary fields).

    - ``base_architecture``: the encoder, ``"topk"``, ``"standard"`` (ReLU) or
      ``"jumprelu"``; ``k``: active latents of a TopK encoder.
    - ``vocab_size``: rows of the token table, the model's ``d_vocab``.
    - ``pair_buckets``: rows of the hashed (previous, current) token-pair
      table; 0 disables it.
    - ``apply_lookup_to_input``: also subtract the table terms from the
      encoder's input, so the latents encode only what the tokens do not
      explain (off in the paper).
    - ``lookup``: which tables, ``"token"``, ``"upstream_sae"`` or ``"both"``.
    - ``upstream_release``, ``upstream_sae_id``: the frozen upstream SAE
      (anything ``sae_lens_ext.load_sae`` resolves: a registered release, a
      local folder, SAE-Lens's directory, a Hugging Face repo);
      ``upstream_hook_name``, ``upstream_d_in``, ``upstream_d_sae``: its hook
      and shape, checked when it is loaded; ``upstream_key``: ``"codes"``
      (``g @ U``) or ``"top1"`` (``U[argmax g]`` where any latent fires).
    """

    base_architecture: str = "topk"
    k: int = 100
    vocab_size: int = 0
    pair_buckets: int = 0
    apply_lookup_to_input: bool = False
    lookup: str = "token"
    upstream_release: str | None = None
    upstream_sae_id: str | None = None
    upstream_hook_name: str | None = None
    upstream_d_in: int = 0
    upstream_d_sae: int = 0
    upstream_key: str = "codes"

    def __post_init__(self):
        check_table_config(self)
        super().__post_init__()

    @classmethod
    def architecture(cls) -> str:
        """The registry name, ``"tokenized"``."""
        return ARCHITECTURE


@dataclass
class TokenizedSAEConfig(TokenTableFields, SAEConfig):
    """Config of an inference tokenized SAE: SAE-Lens's ``SAEConfig`` plus
    :class:`TokenTableFields`, and ``rescale_acts_by_decoder_norm`` as in
    SAE-Lens's TopK SAE."""

    rescale_acts_by_decoder_norm: bool = False


@dataclass
class TokenizedTrainingSAEConfig(TokenTableFields, TrainingSAEConfig):
    """Config of a tokenized training SAE: SAE-Lens's ``TrainingSAEConfig``
    plus :class:`TokenTableFields`.

    TopK fields (``use_sparse_activations``, ``aux_loss_coefficient``,
    ``rescale_acts_by_decoder_norm``), ReLU fields (``l1_coefficient``,
    ``lp_norm``, ``l1_warm_up_steps``) and JumpReLU fields (``jumprelu_*``,
    ``l0_coefficient``, ``l0_warm_up_steps``, ``pre_act_loss_coefficient``,
    ``target_l0``) mean what they mean in SAE-Lens and are used by the
    matching ``base_architecture`` only.
    """

    rescale_acts_by_decoder_norm: bool = True
    use_sparse_activations: bool = False
    aux_loss_coefficient: float = 1.0
    l1_coefficient: float = 1.0
    lp_norm: float = 1.0
    l1_warm_up_steps: int = 0
    jumprelu_init_threshold: float = 0.01
    jumprelu_bandwidth: float = 0.05
    jumprelu_sparsity_loss_mode: str = "step"
    l0_coefficient: float = 1.0
    l0_warm_up_steps: int = 0
    pre_act_loss_coefficient: float | None = None
    jumprelu_tanh_scale: float = 4.0
    jumprelu_ste_to_input: bool = False
    target_l0: float | None = None


def register_architecture(register=None) -> None:
    """Register ``tokenized`` (inference and training classes) with SAE-Lens.

    ``register`` is the host's ``register_sae_architectures`` callback; without
    it the classes go straight into SAE-Lens's registry.  Either way a second
    call is a no-op, so importing the package and loading the plugins in any
    order is safe.
    """
    if register is None:
        register = _register_if_missing
    register(
        ARCHITECTURE,
        TokenizedSAE,
        TokenizedSAEConfig,
        TokenizedTrainingSAE,
        TokenizedTrainingSAEConfig,
    )


def _register_if_missing(
    architecture, sae_class, config_class, training_class, training_config_class
) -> None:
    from sae_lens.registry import (
        SAE_CLASS_REGISTRY,
        SAE_TRAINING_CLASS_REGISTRY,
        register_sae_class,
        register_sae_training_class,
    )

    if architecture not in SAE_CLASS_REGISTRY:
        register_sae_class(architecture, sae_class, config_class)
    if architecture not in SAE_TRAINING_CLASS_REGISTRY:
        register_sae_training_class(architecture, training_class, training_config_class)


class TokenTableMixin:
    """Lookup tables, key binding and the table term of the reconstruction.

    Mixed in front of an SAE-Lens SAE class; ``decode`` adds the table term
    to the base reconstruction (after ``hook_sae_recons``, which keeps the
    latents' part alone) through the new hook point ``hook_sae_lookup``.
    """

    W_lookup: nn.Parameter
    W_pair_lookup: nn.Parameter
    W_upstream_lookup: nn.Parameter

    def __init__(self, cfg, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)
        self._token_keys: TokenKeys | None = None
        # A plain attribute, not a submodule: the frozen upstream SAE is no
        # part of this SAE's parameters, optimiser or state dict.
        object.__setattr__(self, "_upstream_sae", None)
        self.hook_sae_lookup = HookPoint()
        self.setup()

    def initialize_weights(self) -> None:
        """Base weights, then the tables (token, pair, upstream) at zero."""
        super().initialize_weights()
        kwargs = dict(dtype=self.dtype, device=self.device)
        if uses_token_table(self.cfg):
            shape = (self.cfg.vocab_size, self.cfg.d_in)
            self.W_lookup = nn.Parameter(torch.zeros(shape, **kwargs))
        if self.cfg.pair_buckets:
            pair_shape = (self.cfg.pair_buckets, self.cfg.d_in)
            self.W_pair_lookup = nn.Parameter(torch.zeros(pair_shape, **kwargs))
        if uses_upstream(self.cfg):
            upstream_shape = (self.cfg.upstream_d_sae, self.cfg.d_in)
            self.W_upstream_lookup = nn.Parameter(torch.zeros(upstream_shape, **kwargs))

    # -- the upstream SAE ----------------------------------------------------

    @property
    def upstream_sae(self):
        """The frozen upstream SAE (loaded from the config's reference on first use)."""
        if not uses_upstream(self.cfg):
            return None
        if self._upstream_sae is None:
            object.__setattr__(
                self, "_upstream_sae", load_upstream_sae(self.cfg, self.W_dec.device)
            )
        return self._upstream_sae

    def attach_upstream(self, upstream_sae) -> None:
        """Use ``upstream_sae`` (already loaded) as the upstream SAE; it is frozen."""
        from .upstream import check_upstream_sae, freeze

        check_upstream_sae(self.cfg, upstream_sae)
        object.__setattr__(self, "_upstream_sae", freeze(upstream_sae))

    @torch.no_grad()
    def upstream_codes(self, upstream_acts: torch.Tensor) -> torch.Tensor:
        """The upstream SAE's code ``g`` of activations at its hook."""
        upstream = self.upstream_sae
        if upstream.W_dec.device != upstream_acts.device:
            upstream.to(upstream_acts.device)
        return upstream.encode(upstream_acts.to(upstream.W_dec.dtype))

    # -- key binding ---------------------------------------------------------

    def set_tokens(
        self, tokens=None, prev_tokens=None, *, upstream_acts=None, upstream_codes=None
    ) -> None:
        """Bind the keys of the activations the next calls will see.

        ``tokens`` has the activations' leading shape: ``[batch, seq]`` for
        ``[batch, seq, d_in]`` or ``[n]`` for ``[n, d_in]``.  For flattened
        rows and a pair table, also give ``prev_tokens`` (-1 where none).  An
        upstream lookup needs the upstream hook's activations at the same
        positions (``upstream_acts``, encoded here) or their codes
        (``upstream_codes``).  The binding stays until replaced or cleared.
        """
        if upstream_acts is not None:
            upstream_codes = self.upstream_codes(torch.as_tensor(upstream_acts))
        self._token_keys = TokenKeys(None, None, upstream_codes)
        if tokens is not None:
            keys = make_keys(
                tokens,
                prev_tokens,
                vocab_size=self.cfg.vocab_size,
                needs_prev=bool(self.cfg.pair_buckets),
            )
            self._token_keys = dataclasses.replace(keys, upstream_codes=upstream_codes)

    def bind_upstream_acts(self, upstream_acts: torch.Tensor) -> None:
        """Add the codes of ``upstream_acts`` to the bound keys (tokens kept)."""
        codes = self.upstream_codes(upstream_acts)
        keys = self._token_keys or TokenKeys(None, None)
        self._token_keys = dataclasses.replace(keys, upstream_codes=codes)

    def clear_tokens(self) -> None:
        """Forget the bound keys."""
        self._token_keys = None

    @contextlib.contextmanager
    def using_tokens(
        self, tokens=None, prev_tokens=None, *, upstream_acts=None, upstream_codes=None
    ) -> Iterator[None]:
        """Bind keys (as :meth:`set_tokens`) inside a ``with`` block."""
        previous = self._token_keys
        self.set_tokens(
            tokens,
            prev_tokens,
            upstream_acts=upstream_acts,
            upstream_codes=upstream_codes,
        )
        try:
            yield
        finally:
            self._token_keys = previous

    @contextlib.contextmanager
    def _using_keys(self, keys: TokenKeys) -> Iterator[None]:
        previous = self._token_keys
        self._token_keys = keys
        try:
            yield
        finally:
            self._token_keys = previous

    def capture_tokens(self, model):
        """Take token ids from ``model``'s input (and, for an upstream lookup,
        the upstream codes from its upstream hook) on every forward pass.

        Returns a handle; ``handle.remove()`` (or ``with`` on it) detaches.
        """
        from .capture import capture_tokens

        return capture_tokens(model, self)

    # -- the table term ------------------------------------------------------

    def lookup_term(self, leading_shape, dtype: torch.dtype) -> torch.Tensor:
        """``T[token] (+ P[pair]) (+ g @ U)`` for activations of ``leading_shape``."""
        keys = self._bound_keys(tuple(leading_shape))
        keys = keys.to(self.W_dec.device)
        term = 0.0
        if uses_token_table(self.cfg):
            term = functional.embedding(keys.tokens, self.W_lookup)
        if self.cfg.pair_buckets:
            rows = pair_rows(keys, self.cfg.vocab_size, self.cfg.pair_buckets)
            term = term + functional.embedding(rows, self.W_pair_lookup)
        if uses_upstream(self.cfg):
            term = term + upstream_term(
                keys.upstream_codes, self.W_upstream_lookup, self.cfg.upstream_key
            )
        return term.to(dtype)

    def _bound_keys(self, leading_shape: tuple[int, ...]) -> TokenKeys:
        keys = self._token_keys
        needs_tokens = uses_token_table(self.cfg) or bool(self.cfg.pair_buckets)
        if keys is None or (needs_tokens and keys.tokens is None):
            raise MissingTokensError(
                "this tokenized SAE needs the token id of every activation: wrap "
                "the call in `with sae.using_tokens(tokens):`, call "
                "sae.set_tokens(tokens), or run a model after "
                "sae.capture_tokens(model); for SAETrainer, pack batches with "
                "pack_tokens(acts, tokens, prev_tokens); for SAE-Lens's training "
                "runner, use TokenizedSAETrainingRunner"
            )
        if uses_upstream(self.cfg) and keys.upstream_codes is None:
            raise MissingTokensError(
                "this tokenized SAE's table is keyed on the upstream SAE "
                f"{self.cfg.upstream_release}/{self.cfg.upstream_sae_id} at "
                f"{self.cfg.upstream_hook_name!r}: pass its activations "
                "(`sae.using_tokens(tokens, upstream_acts=acts)`), or run a model "
                "after sae.capture_tokens(model), which reads them from that hook "
                "in the same forward pass; for SAETrainer, pack them with "
                "pack_tokens(acts, tokens, prev_tokens, upstream_acts)"
            )
        shapes = {keys.leading_shape}
        if keys.upstream_codes is not None:
            shapes.add(tuple(keys.upstream_codes.shape[:-1]))
        if shapes != {leading_shape}:
            raise ValueError(
                f"bound keys have leading shape {sorted(shapes)} but the "
                f"activations' leading shape is {leading_shape}; bind one key per "
                "activation row (a stale binding from an earlier batch? a model run "
                "with generate() or start_at_layer?)"
            )
        return keys

    @property
    def packed_width(self) -> int:
        """Columns of a packed row: activations, 2 token ids, upstream activations."""
        upstream = self.cfg.upstream_d_in if uses_upstream(self.cfg) else 0
        return self.cfg.d_in + KEY_COLUMNS + upstream

    def unpack(self, batch: torch.Tensor) -> tuple[torch.Tensor, TokenKeys]:
        """Activations and keys (upstream codes encoded) of a packed batch."""
        if not uses_upstream(self.cfg):
            return unpack_tokens(batch, self.cfg.d_in, self.cfg.vocab_size)
        head, upstream_acts = split_upstream(
            batch, self.cfg.d_in + KEY_COLUMNS, self.cfg.upstream_d_in
        )
        acts, keys = unpack_tokens(head, self.cfg.d_in, self.cfg.vocab_size)
        codes = self.upstream_codes(upstream_acts)
        return acts, dataclasses.replace(keys, upstream_codes=codes)

    def process_sae_in(self, sae_in: torch.Tensor) -> torch.Tensor:
        """Base input processing, minus the table term if configured."""
        processed = super().process_sae_in(sae_in)
        if self.cfg.apply_lookup_to_input:
            processed = processed - self.lookup_term(
                processed.shape[:-1], processed.dtype
            )
        return processed

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        """Base reconstruction plus the table term."""
        recons = super().decode(feature_acts)
        term = self.lookup_term(recons.shape[:-1], recons.dtype)
        return recons + self.hook_sae_lookup(term)


class TokenizedSAE(TokenTableMixin, SAE[TokenizedSAEConfig]):
    """Inference tokenized SAE; ``TokenizedSAE(cfg)`` builds the variant for
    ``cfg.base_architecture`` (:class:`TokenizedTopKSAE` or
    :class:`TokenizedStandardSAE`)."""

    def __new__(cls, cfg: TokenizedSAEConfig, use_error_term: bool = False):
        if cls is TokenizedSAE:
            cls = INFERENCE_VARIANTS[cfg.base_architecture]
        return super().__new__(cls)


class TokenizedTopKSAE(TokenizedSAE, TopKSAE):
    """SAE-Lens's TopK SAE with token tables."""


class TokenizedStandardSAE(TokenizedSAE, StandardSAE):
    """SAE-Lens's ReLU (standard) SAE with token tables."""


class TokenizedJumpReLUSAE(TokenizedSAE, JumpReLUSAE):
    """SAE-Lens's JumpReLU SAE with token tables."""


INFERENCE_VARIANTS = {
    "topk": TokenizedTopKSAE,
    "standard": TokenizedStandardSAE,
    "jumprelu": TokenizedJumpReLUSAE,
}


class TokenizedTrainingSAE(TokenTableMixin, TrainingSAE[TokenizedTrainingSAEConfig]):
    """Training tokenized SAE for SAE-Lens's ``SAETrainer``.

    ``training_forward_pass`` accepts packed batches ``[n, d_in + 2]`` (see
    :func:`~.keys.pack_tokens`) and unpacks the token columns; plain
    ``[n, d_in]`` batches use the tokens bound with ``set_tokens``.
    """

    def __new__(cls, cfg: TokenizedTrainingSAEConfig, use_error_term: bool = False):
        if cls is TokenizedTrainingSAE:
            cls = TRAINING_VARIANTS[cfg.base_architecture]
        return super().__new__(cls)

    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        """Unpack the key columns, then SAE-Lens's training forward pass.

        A batch of any other width than ``d_in`` or the packed rows'
        ``[n, packed_width]`` is refused with the fix.
        """
        sae_in = step_input.sae_in
        if sae_in.ndim == 2 and sae_in.shape[1] == self.packed_width:
            acts, keys = self.unpack(sae_in)
            unpacked = dataclasses.replace(step_input, sae_in=acts)
            with self._using_keys(keys):
                return super().training_forward_pass(unpacked)
        if sae_in.ndim < 1 or sae_in.shape[-1] != self.cfg.d_in:
            raise ValueError(
                f"training batch of shape {tuple(sae_in.shape)}: expected activations "
                f"[..., d_in={self.cfg.d_in}] with their tokens bound by set_tokens, or "
                f"rows [n, {self.packed_width}] packed by pack_tokens(acts, tokens, "
                "prev_tokens, upstream_acts)"
            )
        return super().training_forward_pass(step_input)


class TokenizedTopKTrainingSAE(TokenizedTrainingSAE, TopKTrainingSAE):
    """SAE-Lens's TopK training SAE with token tables."""


class TokenizedStandardTrainingSAE(TokenizedTrainingSAE, StandardTrainingSAE):
    """SAE-Lens's ReLU + L1 training SAE with token tables."""


class TokenizedJumpReLUTrainingSAE(TokenizedTrainingSAE, JumpReLUTrainingSAE):
    """SAE-Lens's JumpReLU + L0 training SAE with token tables."""


TRAINING_VARIANTS = {
    "topk": TokenizedTopKTrainingSAE,
    "standard": TokenizedStandardTrainingSAE,
    "jumprelu": TokenizedJumpReLUTrainingSAE,
}
