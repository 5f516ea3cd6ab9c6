"""Weights-only runs: which analyses work without a model, and why others skip.

When no model can be had (the SAE's metadata names none, or ``--no-model``)
an analysis that declares ``"weights"`` and needs neither ``"tokens"`` nor
``"model"`` still runs, from the SAE's weights alone (without the shared
pass: e.g. the meta-SAE then decomposes every decoder row, dead or not).
Every other analysis is skipped with a one-line reason, recorded in
``summary.json``, the model card and on the console.
"""

from __future__ import annotations

from .analysis import Analysis

NEED_WORDS = {
    "activations": "hook activations",
    "tokens": "tokens",
    "model": "the model itself",
}
NO_MODEL_FLAG = "--no-model was given"
NO_MODEL_METADATA = (
    "the SAE's cfg.json metadata names no model_name; pass --model "
    "(run(model=...)) to give one"
)


def runs_on_weights(cls: type[Analysis]) -> bool:
    """Whether an analysis can run from the SAE's weights alone."""
    return "weights" in cls.needs and not cls.needs & {"tokens", "model"}


def skip_reason(cls: type[Analysis], why: str) -> str:
    """One line saying why an analysis was skipped in a weights-only run."""
    wanted = [NEED_WORDS[n] for n in sorted(cls.needs) if n in NEED_WORDS]
    return f"needs {' and '.join(wanted)}, but there is no model ({why})"


def split_weights_only(
    classes: dict[str, type[Analysis]], why: str
) -> tuple[dict[str, type[Analysis]], dict[str, str]]:
    """``(analyses that run, {skipped analysis: reason})`` with no model."""
    kept = {name: cls for name, cls in classes.items() if runs_on_weights(cls)}
    skipped = {
        name: skip_reason(cls, why) for name, cls in classes.items() if name not in kept
    }
    return kept, skipped
