"""Planted parent/child hierarchies and a tiny SAE trained on them.

Ground truth for the absorption diagnostics.  The features and their firing
come from :mod:`sae_lens.synthetic` (a :class:`FeatureDictionary` of
orthogonal directions, an :class:`ActivationGenerator` whose hierarchy
modifier only lets a child fire with its parent, children mutually
exclusive).  An L1-penalised ReLU SAE started at the true features and
trained briefly learns to absorb: a child's latent takes in its parent's
direction, and the parent's latent stops firing whenever a child is on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PlantedHierarchy:
    """Synthetic data with known absorbed latents, and an SAE trained on it.

    Latent ``i`` of ``sae`` starts at feature ``i``, so the ground truth is
    indexed the same way: ``parents`` are the parent latents (absorbed when
    ``hierarchical``), ``children[p]`` the latents that absorb parent ``p``.
    """

    sae: object
    feature_dict: object
    generator: object
    parents: list[int]
    children: dict[int, list[int]]
    hierarchical: bool

    def sample(self, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` inputs ``[n, d_in]`` and their true feature activations."""
        torch.manual_seed(seed)
        with torch.no_grad():
            features = self.generator(n)
            return self.feature_dict(features), features

    def absorption_of_parents(self, n: int = 20_000, seed: int = 1) -> torch.Tensor:
        """Per parent, the fraction of parent+child inputs where its latent is off."""
        x, features = self.sample(n, seed)
        with torch.no_grad():
            codes = self.sae.encode(x)
        rates = []
        for parent in self.parents:
            kids = self.children[parent]
            both = (features[:, parent] > 0) & (features[:, kids] > 0).any(1)
            rates.append((codes[both, parent] <= 0).float().mean())
        return torch.stack(rates)


def planted_hierarchy(
    *,
    n_parents: int = 4,
    n_children: int = 3,
    n_free: int = 8,
    d_in: int = 32,
    hierarchical: bool = True,
    l1_coefficient: float = 1.0,
    n_train: int = 16_384,
    steps: int = 150,
    batch_size: int = 1024,
    lr: float = 1e-2,
    seed: int = 0,
) -> PlantedHierarchy:
    """Train a ReLU SAE on data with (or, as a control, without) a hierarchy.

    Features are laid out parent first, then its ``n_children`` children,
    then ``n_free`` independent features.  With ``hierarchical=False`` the
    same features fire independently with the same probabilities, so
    nothing should be absorbed.  Training minimises
    ``||x - x_hat||^2 + l1_coefficient * sum_i a_i ||W_dec[i]||`` by Adam
    on ``steps`` minibatches drawn from a pool of ``n_train`` samples.
    """
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.synthetic import (
        ActivationGenerator,
        FeatureDictionary,
        HierarchyNode,
        hierarchy_modifier,
    )

    n_features = n_parents * (1 + n_children) + n_free
    if n_features > d_in:
        raise ValueError(
            f"{n_features} features do not fit orthogonally in d_in={d_in}; "
            "raise d_in or use fewer features"
        )
    torch.manual_seed(seed)
    feature_dict = FeatureDictionary(n_features, d_in, initializer=None, seed=seed)
    with torch.no_grad():  # exactly orthonormal features (QR, not SAE-Lens's
        # iterative orthogonaliser, which takes seconds)
        q, _ = torch.linalg.qr(torch.randn(d_in, n_features))
        feature_dict.feature_vectors.copy_(q.T)
    probabilities = torch.full((n_features,), 0.05)
    roots, parents, children = [], [], {}
    for block in range(n_parents):
        parent = block * (1 + n_children)
        kids = list(range(parent + 1, parent + 1 + n_children))
        parents.append(parent)
        children[parent] = kids
        probabilities[parent] = 0.15
        probabilities[kids] = 0.25 if hierarchical else 0.25 * 0.15
        roots.append(
            HierarchyNode(
                parent,
                children=[HierarchyNode(k) for k in kids],
                mutually_exclusive_children=True,
            )
        )
    generator = ActivationGenerator(
        n_features,
        probabilities,
        std_firing_magnitudes=0.1,
        modify_activations=hierarchy_modifier(roots) if hierarchical else None,
    )
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=n_features))
    with torch.no_grad():
        sae.W_enc.copy_(feature_dict.feature_vectors.T)
        sae.W_dec.copy_(feature_dict.feature_vectors)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    planted = PlantedHierarchy(
        sae, feature_dict, generator, parents, children, hierarchical
    )
    pool, _ = planted.sample(n_train, seed=seed)
    _train(sae, pool, l1_coefficient, steps, batch_size, lr, seed)
    return planted


def _train(sae, pool, l1_coefficient, steps, batch_size, lr, seed):
    """Plain Adam on reconstruction + decoder-norm-weighted L1."""
    order = torch.Generator().manual_seed(seed)
    parameters = [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec]
    optimizer = torch.optim.Adam(parameters, lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            x = pool[torch.randint(len(pool), (batch_size,), generator=order)]
            codes = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
            x_hat = codes @ sae.W_dec + sae.b_dec
            mse = (x_hat - x).pow(2).sum(1).mean()
            sparsity = (codes * sae.W_dec.norm(dim=1)).sum(1).mean()
            loss = mse + l1_coefficient * sparsity
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    sae.eval()


class WordTokenizer:
    """A stand-in tokenizer: token id ``i`` decodes to ``words[i]``."""

    def __init__(self, words: list[str]):
        self.words = words

    def decode(self, ids) -> str:
        """Concatenated words of ``ids``."""
        return "".join(self.words[int(i)] for i in ids)

    def __len__(self) -> int:
        return len(self.words)


@dataclass
class PlantedLetters:
    """Token rows whose first letter is a planted direction, and an SAE that
    absorbs it for chosen tokens.

    ``absorbed`` holds the token ids whose own latent carries their letter
    (the letter latent of ``letter_latents`` is silent on them).
    """

    sae: object
    tokenizer: WordTokenizer
    tokens: torch.Tensor  # [n]
    sae_in: torch.Tensor  # [n, d_in]
    letter_latents: dict[str, int]
    absorbed: set[int]


def planted_letters(
    *,
    letters: str = "abcd",
    words_per_letter: int = 16,
    absorbed_per_letter: int = 6,
    n_other: int = 4,
    occurrences: int = 4,
    noise: float = 0.05,
    seed: int = 0,
) -> PlantedLetters:
    """Hand-built first-letter absorption with a known rate.

    Every word has its own direction ``t_w`` and every letter one ``l_L``;
    an occurrence of word ``w`` is ``l_L(w) + t_w`` plus noise (words that
    are not alphabetic have no letter).  The ReLU SAE has one latent per
    letter, reading ``l_L`` minus the directions of that letter's absorbed
    words, and one per word whose decoder is ``t_w + l_L`` for an absorbed
    word (it absorbed the letter) and ``t_w`` otherwise.
    """
    from sae_lens import StandardSAE, StandardSAEConfig

    suffixes = "etaoinshrdlucmfwypvbgkjqxz"
    words, word_letter = [], []
    for letter in letters:
        for j in range(words_per_letter):
            words.append(" " + letter + suffixes[j % 26] * (1 + j // 26) + "n")
            word_letter.append(letters.index(letter))
    words += [f" {k}{k}" for k in range(n_other)]
    word_letter += [-1] * n_other
    n_words, n_letters = len(words), len(letters)
    d_in = n_words + n_letters
    generator = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(d_in, d_in, generator=generator))
    letter_dir, word_dir = basis[:n_letters], basis[n_letters:]
    absorbed = {
        w
        for w in range(n_words)
        if word_letter[w] >= 0 and w % words_per_letter < absorbed_per_letter
    }
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=n_letters + n_words))
    with torch.no_grad():
        sae.b_dec.zero_()
        sae.b_enc.fill_(-0.5)
        for index in range(n_letters):
            members = [w for w in absorbed if word_letter[w] == index]
            sae.W_enc[:, index] = letter_dir[index] - word_dir[members].sum(0)
            sae.W_dec[index] = letter_dir[index]
        sae.b_enc[n_letters:] = -0.2
        for w in range(n_words):
            sae.W_enc[:, n_letters + w] = word_dir[w]
            decoder = word_dir[w].clone()
            if w in absorbed:
                decoder += letter_dir[word_letter[w]]
            sae.W_dec[n_letters + w] = decoder
    tokens = torch.arange(n_words).repeat(occurrences)
    tokens = tokens[torch.randperm(len(tokens), generator=generator)]
    has_letter = torch.tensor(word_letter)[tokens] >= 0
    letter_part = letter_dir[torch.tensor(word_letter)[tokens].clamp_min(0)]
    sae_in = word_dir[tokens] + letter_part * has_letter[:, None]
    sae_in = sae_in + noise * torch.randn(sae_in.shape, generator=generator)
    return PlantedLetters(
        sae,
        WordTokenizer(words),
        tokens,
        sae_in,
        {letter: i for i, letter in enumerate(letters)},
        absorbed,
    )
