"""Resolve a model for a run: ``--model``, an SAE's metadata, or a release.

A model is named in one of four ways:

- a release registered by a plugin whose ``load_model`` builds it;
- a local Hugging Face folder (``config.json`` + weights + tokenizer),
  converted to a TransformerLens ``HookedTransformer`` with its tokenizer;
- ``module:function``, a function returning a ``HookedTransformer``;
- a TransformerLens model name (``gpt2``, ``EleutherAI/pythia-70m``...).

An SAE whose metadata names a model that a registered release provides
loads that release's model, so a copied demo SAE works anywhere.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from .plugins import get_registry

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

MODEL_HELP = (
    "a TransformerLens model name, a local Hugging Face folder (with "
    "config.json and its tokenizer), module:function returning a "
    "HookedTransformer, or a release that provides a model"
)
MODEL_FORMS = f"--model takes {MODEL_HELP}; --no-model runs weights-only analyses."
_ENTRY_POINT = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class ModelError(ValueError):
    """A model could not be resolved or built; the message says what to do."""


def load_model(
    spec: str, *, device: str = "cpu", from_pretrained_kwargs: dict | None = None
) -> HookedTransformer:
    """Build the TransformerLens model named by ``spec`` (see the module doc).

    ``from_pretrained_kwargs`` go to ``HookedTransformer.from_pretrained``
    for TransformerLens names (an SAE's ``model_from_pretrained_kwargs``).
    """
    release = release_providing(spec)
    if release is not None:
        return release.load_model(device)
    folder = Path(spec).expanduser()
    if folder.is_dir():
        return load_hf_folder(folder, device=device)
    if _ENTRY_POINT.match(spec):
        return load_from_function(spec, device=device)
    official = official_model_name(spec)
    from transformer_lens import HookedTransformer

    return HookedTransformer.from_pretrained(
        official, device=device, **(from_pretrained_kwargs or {})
    )


def release_providing(model_name: str):
    """The registered release named ``model_name``, or whose SAEs name it as model.

    Only releases with a ``load_model`` count; None when no release fits.
    """
    releases = get_registry().releases()
    named = releases.get(model_name)
    if named is not None and named.load_model is not None:
        return named
    for release in releases.values():
        if release.load_model is None:
            continue
        if model_name in release_model_names(release):
            return release
    return None


def release_model_names(release) -> set[str]:
    """The ``metadata.model_name`` values in a release's SAE ``cfg.json`` files."""
    names = set()
    for folder in release.saes.values():
        try:
            cfg = json.loads((Path(folder) / "cfg.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        name = (cfg.get("metadata") or {}).get("model_name") or cfg.get("model_name")
        if name:
            names.add(name)
    return names


def release_with_dataset(dataset: str | None):
    """A registered release whose own tokens are the dataset ``dataset``, or None."""
    for release in get_registry().releases().values():
        if dataset and release.dataset == dataset and release.load_tokens:
            return release
    return None


def official_model_name(name: str) -> str:
    """TransformerLens's official name for ``name``, or a ModelError with the nearest."""
    from transformer_lens.loading_from_pretrained import (
        MODEL_ALIASES,
        get_official_model_name,
        make_model_alias_map,
    )

    try:
        return get_official_model_name(name)
    except ValueError:
        pass
    aliases = [alias for names in MODEL_ALIASES.values() for alias in names]
    known = sorted({*make_model_alias_map().values(), *aliases})
    known += sorted(get_registry().releases())
    raise ModelError(
        nearest_names_message("model", name, known)
        + f" No folder {name!r} under {Path.cwd()} either. "
        + MODEL_FORMS
    )


def nearest_names_message(kind: str, name: str, known: list[str]) -> str:
    """An unknown-name message that names only the closest known names."""
    lowered = {k.lower(): k for k in known}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=5, cutoff=0.5)
    short = name.lower().rsplit("/", 1)[-1]
    close += [k for k in lowered if short and short in k and k not in close][:5]
    shown = [lowered[c] for c in close[:5]]
    hint = f" Nearest: {', '.join(shown)}." if shown else ""
    return f"Unknown {kind} {name!r}.{hint}"


def load_from_function(spec: str, *, device: str = "cpu") -> HookedTransformer:
    """Call ``module:function`` (with ``device=`` when it takes one)."""
    from transformer_lens import HookedTransformer

    module_name, function_name = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(
            f"--model {spec}: cannot import module {module_name!r} ({exc}); put it "
            "on PYTHONPATH or install its package."
        ) from exc
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ModelError(
            f"--model {spec}: {module_name} has no function {function_name!r}."
        )
    takes_device = "device" in inspect.signature(function).parameters
    model = function(device=device) if takes_device else function()
    if not isinstance(model, HookedTransformer):
        raise ModelError(
            f"--model {spec} returned {type(model).__name__}, not a "
            "transformer_lens.HookedTransformer."
        )
    return model.to(device).eval()


def load_hf_folder(
    folder: Path, *, device: str = "cpu", dtype=None
) -> HookedTransformer:
    """Convert a local Hugging Face causal LM folder to a ``HookedTransformer``.

    The weights are converted by TransformerLens's own converters
    (``get_pretrained_model_config`` / ``get_pretrained_state_dict``, as
    ``HookedTransformer.from_pretrained(..., hf_model=...)`` does) and loaded
    without processing (no layer-norm folding or centring), like SAE-Lens's
    ``from_pretrained_no_processing``, so hook activations equal the Hugging
    Face model's hidden states.  The folder's tokenizer comes with it.
    """
    import torch
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder).expanduser().resolve()
    if not (folder / "config.json").is_file():
        raise ModelError(
            f"{folder} has no config.json, so it is not a Hugging Face model folder "
            "(save one with model.save_pretrained(folder) and "
            "tokenizer.save_pretrained(folder)). " + MODEL_FORMS
        )
    dtype = dtype or torch.float32
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"{folder} has no loadable tokenizer ({exc}); save it there with "
            "tokenizer.save_pretrained(folder)."
        ) from exc
    hf_model = AutoModelForCausalLM.from_pretrained(folder)
    # TransformerLens guesses the architecture from the *name* when it contains
    # "llama" or "gemma" and then never reads config.json; a neutral folder
    # name holding only config.json makes it read the real config.
    with tempfile.TemporaryDirectory() as tmp:
        config_dir = Path(tmp) / "hf-model"
        config_dir.mkdir()
        shutil.copy(folder / "config.json", config_dir / "config.json")
        try:
            cfg = loading.get_pretrained_model_config(
                str(config_dir),
                hf_cfg=hf_model.config.to_dict(),
                device=device,
                dtype=dtype,
            )
        except (KeyError, NotImplementedError, ValueError) as exc:
            raise ModelError(
                f"TransformerLens cannot convert {folder} "
                f"({hf_model.config.architectures}): {type(exc).__name__}: {exc}"
            ) from exc
        state_dict = loading.get_pretrained_state_dict(
            str(config_dir), cfg, hf_model, dtype=dtype
        )
    # the full path, so an SAE trained on this model (its metadata.model_name)
    # finds the folder again from any working directory
    cfg.model_name = str(folder.resolve())
    model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    model.move_model_modules_to_device()
    return model.eval()


def model_for_sae(
    sae: SAE, release: str | None, *, device: str = "cpu"
) -> HookedTransformer | None:
    """The model an SAE was trained on, or None when its metadata names none.

    A release registered with a ``load_model`` builds its own model; so does
    a release that provides the model the SAE's metadata names.  Otherwise
    the metadata's ``model_name`` is resolved like ``--model``.
    """
    registered = get_registry().releases().get(release or "")
    if registered is not None and registered.load_model is not None:
        return registered.load_model(device)
    metadata = sae.cfg.metadata
    if not metadata.model_name:
        return None
    return load_model(
        metadata.model_name,
        device=device,
        from_pretrained_kwargs=metadata.model_from_pretrained_kwargs,
    )
