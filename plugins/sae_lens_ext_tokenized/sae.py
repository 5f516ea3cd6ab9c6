"""The ``tokenized`` SAE-Lens architecture: an SAE plus per-token lookup tables.

Reconstruction (Dooms & Wilhelm 2024)::

    x_hat = W_dec f(x) + b_dec + T[token] (+ P[hash(prev, token)])

``f`` is the encoder of a base SAE-Lens architecture (``topk`` or
``standard`` ReLU): a tokenized SAE *is* that SAE-Lens class with the tables
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
    unpack_tokens,
)

ARCHITECTURE = "tokenized"
BASE_ARCHITECTURES = ("topk", "standard")


def check_table_config(cfg) -> None:
    """Raise ValueError for settings the tokenized architecture cannot honour."""
    if cfg.base_architecture not in BASE_ARCHITECTURES:
        raise ValueError(
            f"base_architecture={cfg.base_architecture!r} is not supported; choose "
            f"one of {list(BASE_ARCHITECTURES)}"
        )
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
class TokenizedSAEConfig(SAEConfig):
    """Config of an inference tokenized SAE.

    - ``base_architecture``: the encoder, ``"topk"`` or ``"standard"`` (ReLU).
    - ``k``, ``rescale_acts_by_decoder_norm``: as in SAE-Lens's TopK SAE
      (used when ``base_architecture="topk"``).
    - ``vocab_size``: rows of the token table, the model's ``d_vocab``.
    - ``pair_buckets``: rows of the hashed (previous, current) token-pair
      table; 0 disables it.
    - ``apply_lookup_to_input``: also subtract the table terms from the
      encoder's input, so the latents encode only what the tokens do not
      explain (off in the paper).
    """

    base_architecture: str = "topk"
    k: int = 100
    rescale_acts_by_decoder_norm: bool = False
    vocab_size: int = 0
    pair_buckets: int = 0
    apply_lookup_to_input: bool = False

    def __post_init__(self):
        super().__post_init__()
        check_table_config(self)

    @classmethod
    def architecture(cls) -> str:
        """The registry name, ``"tokenized"``."""
        return ARCHITECTURE


@dataclass
class TokenizedTrainingSAEConfig(TrainingSAEConfig):
    """Config of a tokenized training SAE.

    Table fields as in :class:`TokenizedSAEConfig`; TopK fields (``k``,
    ``use_sparse_activations``, ``aux_loss_coefficient``,
    ``rescale_acts_by_decoder_norm``) and ReLU fields (``l1_coefficient``,
    ``lp_norm``, ``l1_warm_up_steps``) mean what they mean in SAE-Lens and
    are used by the matching ``base_architecture`` only.
    """

    base_architecture: str = "topk"
    k: int = 100
    rescale_acts_by_decoder_norm: bool = True
    use_sparse_activations: bool = False
    aux_loss_coefficient: float = 1.0
    l1_coefficient: float = 1.0
    lp_norm: float = 1.0
    l1_warm_up_steps: int = 0
    vocab_size: int = 0
    pair_buckets: int = 0
    apply_lookup_to_input: bool = False

    def __post_init__(self):
        check_table_config(self)
        super().__post_init__()

    @classmethod
    def architecture(cls) -> str:
        """The registry name, ``"tokenized"``."""
        return ARCHITECTURE


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
    """Lookup tables, token binding and the table term of the reconstruction.

    Mixed in front of an SAE-Lens SAE class; ``decode`` adds the table term
    to the base reconstruction (after ``hook_sae_recons``, which keeps the
    latents' part alone) through the new hook point ``hook_sae_lookup``.
    """

    W_lookup: nn.Parameter
    W_pair_lookup: nn.Parameter

    def __init__(self, cfg, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)
        self._token_keys: TokenKeys | None = None
        self.hook_sae_lookup = HookPoint()
        self.setup()

    def initialize_weights(self) -> None:
        """Base weights, then the token table (and pair table) at zero."""
        super().initialize_weights()
        shape = (self.cfg.vocab_size, self.cfg.d_in)
        kwargs = dict(dtype=self.dtype, device=self.device)
        self.W_lookup = nn.Parameter(torch.zeros(shape, **kwargs))
        if self.cfg.pair_buckets:
            pair_shape = (self.cfg.pair_buckets, self.cfg.d_in)
            self.W_pair_lookup = nn.Parameter(torch.zeros(pair_shape, **kwargs))

    # -- token binding -------------------------------------------------------

    def set_tokens(self, tokens, prev_tokens=None) -> None:
        """Bind the token ids of the activations the next calls will see.

        ``tokens`` has the activations' leading shape: ``[batch, seq]`` for
        ``[batch, seq, d_in]`` or ``[n]`` for ``[n, d_in]``.  For flattened
        rows and a pair table, also give ``prev_tokens`` (-1 where none).
        The binding stays until replaced or cleared.
        """
        self._token_keys = make_keys(
            tokens,
            prev_tokens,
            vocab_size=self.cfg.vocab_size,
            needs_prev=bool(self.cfg.pair_buckets),
        )

    def clear_tokens(self) -> None:
        """Forget the bound token ids."""
        self._token_keys = None

    @contextlib.contextmanager
    def using_tokens(self, tokens, prev_tokens=None) -> Iterator[None]:
        """Bind token ids inside a ``with`` block, restoring the old binding."""
        previous = self._token_keys
        self.set_tokens(tokens, prev_tokens)
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
        """Take token ids from ``model``'s input on every forward pass.

        Returns a handle; ``handle.remove()`` (or ``with`` on it) detaches.
        """
        from .capture import capture_tokens

        return capture_tokens(model, self)

    # -- the table term ------------------------------------------------------

    def lookup_term(self, leading_shape, dtype: torch.dtype) -> torch.Tensor:
        """``T[token] (+ P[pair])`` for activations of ``leading_shape``."""
        keys = self._token_keys
        if keys is None:
            raise MissingTokensError(
                "this tokenized SAE needs the token id of every activation: wrap "
                "the call in `with sae.using_tokens(tokens):`, call "
                "sae.set_tokens(tokens), or run a model after "
                "sae.capture_tokens(model); for SAETrainer, pack batches with "
                "pack_tokens(acts, tokens, prev_tokens); for SAE-Lens's training "
                "runner, use TokenizedSAETrainingRunner"
            )
        if tuple(keys.tokens.shape) != tuple(leading_shape):
            raise ValueError(
                f"bound tokens have shape {tuple(keys.tokens.shape)} but the "
                f"activations' leading shape is {tuple(leading_shape)}; bind one "
                "token per activation row (a stale binding from an earlier batch? "
                "a model run with generate() or start_at_layer?)"
            )
        keys = keys.to(self.W_lookup.device)
        term = functional.embedding(keys.tokens, self.W_lookup)
        if self.cfg.pair_buckets:
            rows = pair_rows(keys, self.cfg.vocab_size, self.cfg.pair_buckets)
            term = term + functional.embedding(rows, self.W_pair_lookup)
        return term.to(dtype)

    def process_sae_in(self, sae_in: torch.Tensor) -> torch.Tensor:
        """Base input processing, minus the table term if configured."""
        processed = super().process_sae_in(sae_in)
        if self.cfg.apply_lookup_to_input:
            processed = processed - self.lookup_term(
                processed.shape[:-1], processed.dtype
            )
        return processed

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        """Base reconstruction plus the token-table term."""
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


INFERENCE_VARIANTS = {"topk": TokenizedTopKSAE, "standard": TokenizedStandardSAE}


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
        """Unpack the token columns, then SAE-Lens's training forward pass."""
        sae_in = step_input.sae_in
        if sae_in.ndim == 2 and sae_in.shape[1] == self.cfg.d_in + KEY_COLUMNS:
            acts, keys = unpack_tokens(sae_in, self.cfg.d_in, self.cfg.vocab_size)
            unpacked = dataclasses.replace(step_input, sae_in=acts)
            with self._using_keys(keys):
                return super().training_forward_pass(unpacked)
        return super().training_forward_pass(step_input)


class TokenizedTopKTrainingSAE(TokenizedTrainingSAE, TopKTrainingSAE):
    """SAE-Lens's TopK training SAE with token tables."""


class TokenizedStandardTrainingSAE(TokenizedTrainingSAE, StandardTrainingSAE):
    """SAE-Lens's ReLU + L1 training SAE with token tables."""


TRAINING_VARIANTS = {
    "topk": TokenizedTopKTrainingSAE,
    "standard": TokenizedStandardTrainingSAE,
}
