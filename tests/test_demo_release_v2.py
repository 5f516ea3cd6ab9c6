"""Demo release v2: first letters are linearly readable, two hooks, few dead latents.

Every check recomputes its number here from the shipped model, SAEs and
held-out tokens with code independent of ``scripts/build_demo_release.py``
(scikit-learn probes, a hand-written word-start rule, token-level spelling
prompts), never reading a metric the build wrote.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sae_lens_ext import load_sae
from sae_lens_ext.demo import (
    DEMO_RELEASE,
    demo_eval_tokens,
    demo_release_info,
    demo_sae_ids,
    demo_sae_path,
    load_demo_model,
    load_demo_tokenizer,
)

# Issue 21's target: probe F1 >= 0.9 at the SAE hook, on word tokens the model
# may have seen in spelling prompts.  The 5% of word tokens kept out of every
# spelling prompt (and out of the training readout) carry almost no linear
# first-letter signal, so the probe over ALL word tokens sits lower; its floors
# are ~0.04 under the shipped build's values (docs/demo-release.md; the
# sampling noise of a mean F1 over 24 letters is about 0.02) to catch a release
# that lost its first-letter feature.
PROBE_F1_TARGET_SEEN_WORDS = 0.9
PROBE_F1_FLOOR_ALL_WORDS = {
    "blocks.0.hook_resid_post": 0.8,
    "blocks.1.hook_resid_post": 0.85,
}
DEAD_TARGET = 0.10


@pytest.fixture(scope="module")
def model():
    return load_demo_model()


@pytest.fixture(scope="module")
def held_out():
    return demo_eval_tokens()


@pytest.fixture(scope="module")
def hook_acts(model, held_out):
    """Activations ``[n_seq, ctx, d]`` at every hook of the release."""
    hooks = [h["hook_name"] for h in demo_release_info()["hooks"]]
    cache = {h: [] for h in hooks}
    with torch.no_grad():
        for chunk in held_out.split(128):
            _, acts = model.run_with_cache(chunk, names_filter=hooks)
            for hook in hooks:
                cache[hook].append(acts[hook])
    return {hook: torch.cat(parts) for hook, parts in cache.items()}


def test_every_hook_is_listed_with_its_saes_and_each_loads_by_name():
    info = demo_release_info()
    hooks = info["hooks"]
    assert len({h["hook_name"] for h in hooks}) >= 2
    listed = [sae_id for h in hooks for sae_id in h["sae_ids"]]
    assert sorted(listed) == sorted(demo_sae_ids())
    for entry in hooks:
        widths = set()
        for sae_id in entry["sae_ids"]:
            assert sae_id.startswith(entry["layer"] + "-")
            sae = load_sae(DEMO_RELEASE, sae_id)
            assert sae.cfg.metadata.hook_name == entry["hook_name"]
            assert sae.cfg.metadata.model_name == "sae-lens-ext-demo"
            from sae_lens import SAE

            direct = SAE.load_from_disk(demo_sae_path(sae_id))
            assert torch.equal(direct.W_dec, sae.W_dec)
            widths.add(sae.cfg.d_sae)
        assert {512, 1024, 2048} <= widths
    default = load_sae(DEMO_RELEASE)
    assert default.cfg.metadata.hook_name == info["hook_name"]


def _word_start_rows(tokens: torch.Tensor, tokenizer, cap: int = 4):
    """Word-starting alphabetic tokens (own rule: a space piece, or a piece
    after one that ends in a non-letter), ``cap`` occurrences per token."""
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    rows, letters, ids, seen = [], [], [], {}
    flat = tokens.tolist()
    for r, row in enumerate(flat):
        for c in range(1, len(row)):
            piece = pieces[row[c]]
            word = piece[1:] if piece.startswith("Ġ") else piece
            if not (word.isascii() and word.isalpha()):
                continue
            previous = pieces[row[c - 1]]
            if not (piece.startswith("Ġ") or not previous[-1].isalnum()):
                continue
            if seen.get(row[c], 0) >= cap:
                continue
            seen[row[c]] = seen.get(row[c], 0) + 1
            rows.append((r, c))
            letters.append(ord(word[0].lower()) - ord("a"))
            ids.append(row[c])
    return np.array(rows), np.array(letters), np.array(ids)


def _probe_f1(x, letters, ids, seed=0):
    """Mean test F1 of balanced one-vs-rest sklearn probes, disjoint tokens."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    distinct = rng.permutation(np.unique(ids))
    test_ids = distinct[: len(distinct) // 5]
    test = np.isin(ids, test_ids)
    scaler = StandardScaler().fit(x[~test])
    x_train, x_test = scaler.transform(x[~test]), scaler.transform(x[test])
    scores = []
    for letter in range(26):
        y_train, y_test = letters[~test] == letter, letters[test] == letter
        if y_train.sum() < 8 or y_test.sum() < 4:
            continue
        probe = LogisticRegression(class_weight="balanced", max_iter=500, C=1.0)
        probe.fit(x_train, y_train)
        scores.append(f1_score(y_test, probe.predict(x_test)))
    return float(np.mean(scores)), len(scores)


@pytest.mark.parametrize("hook", sorted(PROBE_F1_FLOOR_ALL_WORDS))
def test_first_letter_probe_on_unseen_probe_tokens_meets_target_and_beats_null(
    hook, hook_acts, held_out
):
    rows, letters, ids = _word_start_rows(held_out, load_demo_tokenizer())
    x = hook_acts[hook][rows[:, 0], rows[:, 1]].float().numpy()
    never_spelled = demo_release_info()["spelling"]["unseen_word_ids"]
    seen = ~np.isin(ids, never_spelled)
    assert 0 < (~seen).sum() < 0.2 * len(ids)
    f1_seen, n_letters = _probe_f1(x[seen], letters[seen], ids[seen])
    assert n_letters >= 20
    assert f1_seen >= PROBE_F1_TARGET_SEEN_WORDS
    f1_all, n_letters = _probe_f1(x, letters, ids)
    assert n_letters >= 20
    assert f1_all >= PROBE_F1_FLOOR_ALL_WORDS[hook]
    # null: each distinct token gets the letter of another token, so the
    # probe can only memorise; disjoint test tokens must then fail
    letter_of = dict(zip(ids.tolist(), letters.tolist(), strict=True))
    tokens = sorted(letter_of)
    permuted = np.random.default_rng(1).permutation([letter_of[t] for t in tokens])
    shuffled = dict(zip(tokens, permuted.tolist(), strict=True))
    null_letters = np.array([shuffled[i] for i in ids.tolist()])
    null_f1, _ = _probe_f1(x, null_letters, ids)
    assert null_f1 < 0.3


@pytest.mark.parametrize("sae_id", demo_sae_ids())
def test_dead_fraction_on_held_out_tokens(sae_id, hook_acts):
    sae = load_sae(DEMO_RELEASE, sae_id)
    acts = hook_acts[sae.cfg.metadata.hook_name][:, 1:].reshape(-1, sae.cfg.d_in)
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    with torch.no_grad():
        for chunk in acts.split(8192):
            fired |= (sae.encode(chunk) > 0).any(0)
    assert 1 - fired.float().mean().item() < DEAD_TARGET


def _spelling_prompts(tokenizer, words, shots, letter_of):
    """Token-level prompts "w has the first letter: L\\n" x shots, then the query."""
    template = (
        tokenizer(" has the first letter:", add_special_tokens=False)["input_ids"]
        + tokenizer(" ", add_special_tokens=False)["input_ids"]
    )
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    letter_ids = [tokenizer(c, add_special_tokens=False)["input_ids"][0] for c in
                  "ABCDEFGHIJKLMNOPQRSTUVWXYZ"]  # fmt: skip
    prompts = []
    for i, word in enumerate(words):
        ids = [tokenizer.bos_token_id]
        for example in shots[i]:
            ids += [example, *template, letter_ids[letter_of[example]], *newline]
        prompts.append(ids + [word, *template])
    return torch.tensor(prompts), torch.tensor(letter_ids)


def test_model_spells_words_from_its_spelling_prompts(model):
    """Words seen in spelling prompts are spelled far above the majority guess."""
    tokenizer = load_demo_tokenizer()
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    letter_of = {}
    for i, piece in enumerate(pieces):
        word = piece[1:] if piece.startswith("Ġ") else piece
        if word and word.isascii() and word.isalpha():
            letter_of[i] = ord(word[0].upper()) - ord("A")
    words = sorted(letter_of)
    rng = np.random.default_rng(0)
    sample = rng.choice(words, 400, replace=False).tolist()
    shots = rng.choice(words, (400, 4)).tolist()
    prompts, letter_ids = _spelling_prompts(tokenizer, sample, shots, letter_of)
    with torch.no_grad():
        logits = model(prompts, return_type="logits")[:, -1, letter_ids]
    truth = torch.tensor([letter_of[w] for w in sample])
    accuracy = (logits.argmax(-1) == truth).float().mean().item()
    majority = np.bincount(truth.numpy()).max() / len(truth)
    # 95% of the words are seen in training; the build reports the unseen rest
    assert accuracy > 0.8 > majority + 0.5


@pytest.mark.slow
def test_absorption_evaluates_at_least_20_letters_on_the_default_sae(model):
    from sae_lens_ext_absorption import absorption_report

    sae = load_sae(DEMO_RELEASE)
    report = absorption_report(sae, demo_eval_tokens(), model=model, n_tokens=65_536)
    metrics = report.first_letter.metrics
    assert metrics["letters_evaluated"] >= 20
    letters = report.first_letter.letters
    good = letters[letters["probe_f1"] >= report.config.min_probe_f1]
    assert len(good) == metrics["letters_evaluated"]
    assert good["absorption_rate"].between(0, 1).all()
