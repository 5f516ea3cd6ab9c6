"""The embedded demo release: a small Shakespeare model and its SAEs, offline.

Built by ``scripts/build_demo_release.py`` and shipped as package data in
``sae_lens_ext/demo_release/``; registered by the host as the release
``sae-lens-ext/demo``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

import torch

DEMO_RELEASE = "sae-lens-ext/demo"


def demo_dir() -> Path:
    """The folder holding the demo release's files."""
    return Path(str(files("sae_lens_ext") / "demo_release"))


@lru_cache(maxsize=1)
def demo_release_info() -> dict:
    """The release's ``release.json``: model, SAEs and their measured metrics."""
    return json.loads((demo_dir() / "release.json").read_text())


def demo_sae_ids() -> list[str]:
    """The SAE ids in the demo release."""
    return list(demo_release_info()["saes"])


def demo_sae_path(sae_id: str) -> Path:
    """The SAE-Lens folder of one demo SAE."""
    if sae_id not in demo_release_info()["saes"]:
        raise ValueError(
            f"unknown demo SAE id {sae_id!r}; choose from {demo_sae_ids()}"
        )
    return demo_dir() / "saes" / sae_id


def load_demo_tokenizer():
    """The demo's BPE tokenizer as a ``PreTrainedTokenizerFast``."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(demo_dir() / "tokenizer"))


def load_demo_model(device: str = "cpu"):
    """The demo's TransformerLens model, in eval mode, built from package data."""
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    config = json.loads((demo_dir() / "model" / "config.json").read_text())
    model = HookedTransformer(
        HookedTransformerConfig(**config, device=device),
        tokenizer=load_demo_tokenizer(),
    )
    model.load_state_dict(load_file(demo_dir() / "model" / "model.safetensors"))
    return model.to(device).eval()


def demo_eval_tokens(n_seq: int | None = None) -> torch.Tensor:
    """Held-out token ids ``[n_seq, 128]``, each row starting with BOS."""
    from safetensors.torch import load_file

    tokens = load_file(demo_dir() / "data" / "eval_tokens.safetensors")["tokens"]
    return tokens[:n_seq].long() if n_seq else tokens.long()
