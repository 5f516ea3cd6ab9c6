"""Checks that run before expensive work, each naming the option to fix.

Run options (``--n-tokens``, ``--batch-size``, ``--device``) are checked
before anything loads; token ids, context lengths and SAE weights as soon
as they are known, before the shared pass starts.
"""

from __future__ import annotations

import math

import torch

_CHECK_CHUNK = 1 << 24  # elements checked at a time: bounded extra memory


class InputError(ValueError):
    """A bad option or input; the message names the option and the fix."""


def option_error(analysis: str, config_class, given: dict, exc: Exception):
    """An InputError for a config the analysis refused, naming its option.

    The option is the given field the refusal's message mentions (or, when
    it names none, every given field), spelled as on the command line.
    """
    import dataclasses
    import re

    fields = [f.name for f in dataclasses.fields(config_class)]
    text = str(exc)
    named = [f for f in fields if re.search(rf"\b{re.escape(f)}\b", text)]
    options = [f for f in named if f in given] or named or sorted(given)
    spelled = ", ".join(
        f"--{analysis}.{f} {given[f]!r}" if f in given else f"--{analysis}.{f}"
        for f in options
    )
    return InputError(
        f"invalid option {spelled or analysis}: {text} (Python API: "
        f"config={{{analysis!r}: {{...}}}})"
    )


def check_option_values(analysis: str, given: dict) -> None:
    """Refuse NaN for any option: no analysis has a use for it."""
    for name, value in given.items():
        if isinstance(value, float) and math.isnan(value):
            raise InputError(f"invalid option --{analysis}.{name} nan: give a number")


def check_run_options(*, n_tokens: int, batch_size: int, device: str) -> None:
    """Refuse non-positive ``--n-tokens``/``--batch-size`` and unusable devices."""
    for option, value in (("--n-tokens", n_tokens), ("--batch-size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{option} must be a positive integer, got {value!r}")
    check_device(device)


def check_device(device: str) -> None:
    """Refuse a device torch does not know or this machine cannot use."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(
            f"--device {device!r} is not a device torch knows ({exc}); use cpu, "
            "cuda, cuda:N or mps"
        ) from exc
    kind = parsed.type
    if kind == "cpu":
        return
    if kind == "cuda":
        if torch.version.cuda is None:
            raise InputError(
                f"--device {device!r}: this torch build has no CUDA support "
                f"(torch {torch.__version__}); install a CUDA build of torch or "
                "use --device cpu"
            )
        if not torch.cuda.is_available():
            raise InputError(
                f"--device {device!r}: torch has CUDA but sees no GPU (check the "
                "driver and CUDA_VISIBLE_DEVICES), or use --device cpu"
            )
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise InputError(
                f"--device {device!r}: this machine has {count} CUDA device(s), "
                f"numbered 0 to {count - 1}"
            )
        return
    backend = getattr(torch.backends, kind, None) or getattr(torch, kind, None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise InputError(
            f"--device {device!r}: the {kind!r} backend is not available in this "
            "torch build or on this machine; use --device cpu (or cuda)"
        )


def check_tokens(tokens: torch.Tensor, *, d_vocab: int, n_ctx: int, source: str):
    """Refuse token ids that are not integers, out of range, or too long a context.

    ``source`` names where the tokens came from (the ``--dataset`` value).
    """
    if (
        tokens.dtype.is_floating_point
        or tokens.dtype.is_complex
        or (tokens.dtype == torch.bool)
    ):
        raise InputError(
            f"--dataset {source}: token ids must be integers, got dtype "
            f"{tokens.dtype}; save them as int64 (torch.long) or int32"
        )
    if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise InputError(
            f"--dataset {source}: token ids must be a non-empty [n_seq, context] "
            f"tensor, got shape {tuple(tokens.shape)}"
        )
    if tokens.shape[1] > n_ctx:
        raise InputError(
            f"--dataset {source}: sequences have {tokens.shape[1]} positions but the "
            f"model's context (n_ctx) is {n_ctx}; cut them to at most {n_ctx}"
        )
    bad = (tokens < 0) | (tokens >= d_vocab)
    if bad.any():
        flat = int(bad.reshape(-1).nonzero()[0])
        seq, pos = divmod(flat, tokens.shape[1])
        value = int(tokens[seq, pos])
        count = int(bad.sum())
        raise InputError(
            f"--dataset {source}: token id {value} at sequence {seq}, position {pos} "
            f"is outside the model's vocabulary [0, {d_vocab}) ({count} bad ids in "
            "all); tokenize with the model's own tokenizer"
        )


def check_context_size(context_size: int, n_ctx: int) -> None:
    """Refuse an SAE context size the model cannot run."""
    if context_size > n_ctx:
        raise InputError(
            f"the SAE's metadata.context_size is {context_size}, longer than the "
            f"model's n_ctx {n_ctx}; set metadata.context_size <= {n_ctx} or pass "
            "--dataset with shorter sequences"
        )


def short_dataset_warning(
    tokens: torch.Tensor, n_tokens: int, selected: int, positions: str
) -> str | None:
    """A warning when the dataset runs out before ``n_tokens`` tokens.

    The count reported is ``selected``, the rows the pass will deliver (the
    positions chosen by ``--positions``, described by ``positions``).
    """
    n_seq, context = tokens.shape
    if n_seq * context >= n_tokens:
        return None
    return (
        f"--n-tokens asked for {n_tokens:,} tokens but the dataset gives only "
        f"{selected:,} ({n_seq:,} sequences of {context}, {positions}); "
        "using all of them"
    )


def check_sae_weights(sae, where: str) -> None:
    """Refuse an SAE with NaN or infinite weights, naming the first bad parameter."""
    for name, tensor in sae.state_dict().items():
        if not tensor.is_floating_point():
            continue
        n_bad = sum(
            int((~torch.isfinite(chunk)).sum())
            for chunk in tensor.detach().reshape(-1).split(_CHECK_CHUNK)
        )
        if n_bad:
            raise InputError(
                f"{where}: SAE parameter {name} has {n_bad} NaN or infinite values "
                f"of {tensor.numel()}; the SAE file is damaged or its training "
                "diverged. Re-save or re-download the SAE."
            )


def check_metrics_finite(metrics: dict, names: tuple[str, ...]) -> list[str]:
    """The headline metrics among ``names`` that are missing, None or not finite."""
    bad = []
    for name in names:
        value = metrics.get(name)
        if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
            value = value.item()
        if not isinstance(value, int | float) or not math.isfinite(value):
            bad.append(name)
    return bad
