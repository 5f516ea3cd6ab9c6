"""The words and prompts both sides of the absorption agreement bench share.

SAEBench's absorption eval takes its words from one function,
``get_alpha_tokens(tokenizer)``, in two places: its probe stage (words to
probe, split 80/20, each prompted with ten in-context lines ``"{word} has the
first letter: {L}"`` of words from the same split) and its feature-absorption
stage (in-context lines for the test words it scores).  The second stage
refuses prompts of different token lengths, and its prompts have one length
only when every in-context word and answer (``" A"`` ... ``" Z"``) is one
token; the word scored is one token too, and its answer is not in its prompt.
Restricting the probe stage as well is not possible: SAEBench's probe
training and its per-letter tables need words of all 26 letters, and the
answers of some letters are two tokens on some tokenizers (``" Q"`` on the
demo's).  :func:`comparison_vocabularies` therefore gives the probe stage
SAEBench's alphabetic words (less excluded ids) and the in-context lines of
the second stage the subset with one-token word and answer;
:class:`RestrictedVocabulary` hands each list to the module that asks, so
SAEBench's own code runs unchanged.  :func:`saebench_probe_rows` reads back
the prompts' activations SAEBench saved for its probe, for our side to take
the same rows and the same split.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sae_lens_ext_absorption.letters import LetterRows

PROBE_STAGE = "sae_bench.evals.absorption.common"
ABSORPTION_STAGE = "sae_bench.evals.absorption.feature_absorption"


def comparison_vocabularies(tokenizer, template: str, excluded_ids=()):
    """SAEBench's alphabetic words less ``excluded_ids`` (the probe stage's
    words), the subset whose in-context line has the shortest token length,
    one-token word and answer (the absorption stage's in-context words), and
    a count of what was left out."""
    from sae_bench.evals.absorption.prompting import first_letter_formatter
    from sae_bench.evals.absorption.vocab import get_alpha_tokens

    answer = first_letter_formatter()
    excluded = set(excluded_ids)
    words, counts = [], Counter()
    for word in get_alpha_tokens(tokenizer):
        ids = tokenizer.encode(word, add_special_tokens=False)
        if len(ids) == 1 and ids[0] in excluded:
            counts["excluded id"] += 1
        else:
            words.append(word)

    def line_length(word: str) -> int:
        line = "\n" + template.format(word=word) + answer(word)
        return len(tokenizer.encode(line, add_special_tokens=False))

    lengths = {word: line_length(word) for word in words}
    shortest = min(lengths.values())
    in_context = [word for word in words if lengths[word] == shortest]
    counts.update(
        {"probe words": len(words), "one-length in-context words": len(in_context)}
    )
    return words, in_context, dict(counts)


class RestrictedVocabulary:
    """SAEBench's probe stage takes ``probe_words`` as its vocabulary, its
    absorption stage ``in_context_words``."""

    def __init__(self, probe_words: list[str], in_context_words: list[str]):
        self.words = {PROBE_STAGE: probe_words, ABSORPTION_STAGE: in_context_words}

    def __enter__(self):
        import importlib

        self.originals = {}
        for name, words in self.words.items():
            module = importlib.import_module(name)
            self.originals[module] = module.get_alpha_tokens
            module.get_alpha_tokens = lambda *args, _words=words, **kwargs: list(_words)
        return self

    def __exit__(self, *exc):
        for module, original in self.originals.items():
            module.get_alpha_tokens = original


def probe_folder(probes_dir: Path, model_name: str, layer: int) -> Path:
    """Where SAEBench saves its probe and the prompts' activations."""
    return Path(probes_dir) / model_name / f"layer_{layer}"


def prompt_lengths(folder: Path, tokenizer) -> Counter:
    """Token lengths (with BOS) of every prompt SAEBench's probe saw."""
    lengths = Counter()
    for split in ("train", "test"):
        prompts = pd.read_csv(folder / f"{split}_df.csv", keep_default_na=False)
        for prompt in prompts["prompt"]:
            lengths[len(tokenizer.encode(prompt, add_special_tokens=False)) + 1] += 1
    return lengths


def saebench_probe_rows(folder: Path, tokenizer, sae, codes_per_row: int):
    """SAEBench's probe prompts as our letter rows, and its train/test split.

    Each row is the SAE input at the word of one of SAEBench's prompts (the
    activations it saved), labelled with its answer class, with the SAE's
    ``codes_per_row`` largest codes; train rows come first.
    """
    data = np.load(folder / "data.npz")
    parts = []
    for split in ("train", "test"):
        frame = pd.read_csv(folder / f"{split}_df.csv", keep_default_na=False)
        ids = [tokenizer.encode(w, add_special_tokens=False) for w in frame["token"]]
        if any(len(i) != 1 for i in ids):
            raise ValueError(f"a {split} word of SAEBench's probe is not one token")
        x = torch.from_numpy(np.asarray(data[f"X_{split}"])).float()
        labels = torch.from_numpy(np.asarray(data[f"y_{split}"])).long()
        if len(x) != len(frame) or not torch.equal(
            labels, torch.tensor(frame["answer_class"].to_numpy())
        ):
            raise ValueError(f"SAEBench's saved {split} activations and words differ")
        parts.append((x, torch.tensor([i[0] for i in ids]), labels))
    x = torch.cat([part[0] for part in parts])
    with torch.no_grad():
        codes = sae.encode(x.to(sae.W_dec.device, sae.W_dec.dtype)).float().cpu()
    values, latents = codes.topk(min(codes_per_row, codes.shape[1]), dim=1)
    fired = values > 0
    rows = LetterRows(
        sae_in=x,
        tokens=torch.cat([part[1] for part in parts]),
        letters=torch.cat([part[2] for part in parts]),
        code_latents=torch.where(fired, latents, -1),
        code_values=torch.where(fired, values, 0.0),
    )
    n_train = len(parts[0][0])
    split = (torch.arange(n_train), torch.arange(n_train, len(x)))
    missed = int(((codes > 0).sum(1) - codes_per_row).clamp_min(0).sum())
    return rows, split, missed
