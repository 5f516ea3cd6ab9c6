"""First-letter spelling prompts for the demo model (Chanin et al.'s format).

Each prompt line reads ``{word} has the first letter: {L}`` followed by a
newline, built directly from token ids: the word is one vocabulary token
(any alphabetic ASCII piece, with or without the ``Ġ`` space marker), the
template is ``Ġhas Ġthe Ġfirst Ġletter : Ġ`` and the answer is the
single-byte upper-case letter token, so every answer is one token and the
decoded text is exactly the prompt.  A training row packs as many lines as
fit in the context, so every line after the first has the earlier ones as
in-context examples.  Some word tokens are held out of every spelling row
to measure how well the model spells words it never saw spelled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TEMPLATE = " has the first letter: "
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass
class SpellingVocab:
    """Word tokens, their first letters, and the prompt's fixed token ids."""

    words: torch.Tensor  # [n] token ids of alphabetic pieces
    letters: torch.Tensor  # [n] 0-25
    seen: torch.Tensor  # [n] bool: used in spelling rows
    template: list[int]  # " has the first letter:" then a bare space piece
    letter_ids: torch.Tensor  # [26] token id of each upper-case letter
    newline: int

    def letter_of(self) -> dict[int, int]:
        """Token id -> first-letter index of every word token."""
        return dict(zip(self.words.tolist(), self.letters.tolist(), strict=True))


def word_letter(piece: str) -> int:
    """First-letter index of an alphabetic ASCII piece (``Ġ`` stripped), else -1."""
    word = piece.removeprefix("\u0120")
    if word and word.isascii() and word.isalpha():
        return LETTERS.index(word[0].upper())
    return -1


def spelling_vocab(tokenizer, held_out: float, seed: int) -> SpellingVocab:
    """Every alphabetic token of the vocabulary; ``held_out`` of them unseen."""
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    found = [(i, word_letter(p)) for i, p in enumerate(pieces)]
    found = [(i, letter) for i, letter in found if letter >= 0]
    words = torch.tensor([i for i, _ in found])
    letters = torch.tensor([letter for _, letter in found])
    order = torch.randperm(len(words), generator=torch.Generator().manual_seed(seed))
    seen = torch.ones(len(words), dtype=torch.bool)
    seen[order[: int(round(held_out * len(words)))]] = False

    def one_token(text: str) -> int:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"{text!r} is not a single token of this tokenizer")
        return ids[0]

    template = tokenizer(TEMPLATE.rstrip(), add_special_tokens=False)["input_ids"]
    return SpellingVocab(
        words=words,
        letters=letters,
        seen=seen,
        template=template + [one_token(" ")],
        letter_ids=torch.tensor([one_token(c) for c in LETTERS]),
        newline=one_token("\n"),
    )


def spelling_rows(
    vocab: SpellingVocab, n_rows: int, context: int, bos: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_rows`` rows of packed prompt lines over the seen words, and a loss
    mask that is False where the next token is a (random) word."""
    generator = torch.Generator().manual_seed(seed)
    pool = vocab.words[vocab.seen]
    pool_letters = vocab.letters[vocab.seen]
    line = len(vocab.template) + 3  # word, template, letter, newline
    per_row = (context - 1) // line
    picks = torch.randint(0, len(pool), (n_rows, per_row), generator=generator)
    template = torch.tensor(vocab.template).expand(n_rows, per_row, -1)
    lines = torch.cat(
        [
            pool[picks][..., None],
            template,
            vocab.letter_ids[pool_letters[picks]][..., None],
            torch.full((n_rows, per_row, 1), vocab.newline),
        ],
        dim=-1,
    ).reshape(n_rows, -1)
    pad = context - 1 - lines.shape[1]
    rows = torch.cat(
        [
            torch.full((n_rows, 1), bos),
            lines,
            torch.full((n_rows, pad), vocab.newline),
        ],
        dim=1,
    )
    is_word = torch.zeros(line, dtype=torch.bool)
    is_word[0] = True
    target_is_word = torch.cat(
        [is_word.repeat(per_row), torch.zeros(pad, dtype=torch.bool)]
    )
    # mask[t] covers the prediction of token t + 1
    return rows, ~target_is_word[None].expand(n_rows, -1)


def spelling_accuracy(
    model, vocab: SpellingVocab, words: torch.Tensor, bos: int, shots: int = 4
) -> float:
    """Share of ``words`` whose first letter is the model's top letter token
    after ``shots`` in-context lines of seen words (a fixed set per query)."""
    generator = torch.Generator().manual_seed(1)
    pool = vocab.words[vocab.seen]
    letter_of = vocab.letter_of()
    correct = 0
    with torch.no_grad():
        for chunk in words.split(256):
            examples = pool[
                torch.randint(0, len(pool), (len(chunk), shots), generator=generator)
            ]
            parts = [torch.full((len(chunk), 1), bos)]
            for column in range(shots):
                word = examples[:, column]
                letters = torch.tensor([letter_of[w] for w in word.tolist()])
                parts += [
                    word[:, None],
                    torch.tensor(vocab.template).expand(len(chunk), -1),
                    vocab.letter_ids[letters][:, None],
                    torch.full((len(chunk), 1), vocab.newline),
                ]
            parts += [
                chunk[:, None],
                torch.tensor(vocab.template).expand(len(chunk), -1),
            ]
            prompts = torch.cat(parts, dim=1)
            logits = model(prompts, return_type="logits")[:, -1, vocab.letter_ids]
            truth = torch.tensor([letter_of[w] for w in chunk.tolist()])
            correct += int((logits.argmax(-1) == truth).sum())
    return correct / max(len(words), 1)


def word_start_rows(tokens: torch.Tensor, pieces: list[str], letter_of: dict, cap: int):
    """``(row, column)`` of word-starting word tokens in ``tokens`` (a ``Ġ``
    piece, or one after a piece ending in a non-alphanumeric character), at
    most ``cap`` occurrences per distinct token."""
    ends_word = torch.tensor([not (p[-1:].isalnum()) for p in pieces])
    marked = torch.tensor([p.startswith("\u0120") for p in pieces])
    is_word = torch.zeros(len(pieces), dtype=torch.bool)
    is_word[list(letter_of)] = True
    start = is_word[tokens[:, 1:]] & (marked[tokens[:, 1:]] | ends_word[tokens[:, :-1]])
    row, column = start.nonzero().T
    column = column + 1
    kept, count = [], {}
    for r, c in zip(row.tolist(), column.tolist(), strict=True):
        token = int(tokens[r, c])
        if count.get(token, 0) < cap:
            count[token] = count.get(token, 0) + 1
            kept.append((r, c))
    return torch.tensor(kept).T


def probe_f1(
    x: torch.Tensor, labels: torch.Tensor, tokens: torch.Tensor, seed: int = 0
):
    """Mean per-letter F1 of class-balanced one-vs-rest logistic probes,
    trained on 80% of the distinct tokens and tested on the other 20%."""
    distinct = tokens.unique()
    shuffled = distinct[
        torch.randperm(len(distinct), generator=torch.Generator().manual_seed(seed))
    ]
    is_test = torch.isin(tokens, shuffled[: int(round(0.2 * len(distinct)))])
    mean, std = x[~is_test].mean(0), x[~is_test].std(0).clamp_min(1e-6)
    z = (x - mean) / std
    onehot = torch.nn.functional.one_hot(labels, 26).float()
    train_y, test_y = onehot[~is_test], onehot[is_test]
    usable = (train_y.sum(0) >= 8) & (test_y.sum(0) >= 4)
    n_pos = train_y.sum(0).clamp_min(1)
    pos_weight = (len(train_y) - n_pos) / n_pos
    weight = torch.zeros(26, x.shape[1], requires_grad=True)
    bias = torch.zeros(26, requires_grad=True)
    optim = torch.optim.LBFGS(
        [weight, bias], max_iter=200, line_search_fn="strong_wolfe"
    )

    def closure():
        optim.zero_grad()
        logits = z[~is_test] @ weight.T + bias
        loss = (
            torch.nn.functional.binary_cross_entropy_with_logits(
                logits, train_y, pos_weight=pos_weight, reduction="none"
            )
            .mean(0)
            .sum()
            + 1e-4 * weight.pow(2).sum()
        )
        loss.backward()
        return loss

    optim.step(closure)
    with torch.no_grad():
        predicted = (z[is_test] @ weight.T + bias) > 0
    truth = test_y.bool()
    tp = (predicted & truth).sum(0).float()
    f1 = 2 * tp / (predicted.sum(0) + truth.sum(0)).clamp_min(1)
    return float(f1[usable].mean()), int(usable.sum())


def hook_probe_f1(model, tokens, hook: str, pieces, letter_of, cap: int = 4):
    """First-letter probe F1 on word-starting tokens of ``tokens`` at ``hook``."""
    row, column = word_start_rows(tokens, pieces, letter_of, cap)
    acts = []
    with torch.no_grad():
        for chunk in range(0, len(tokens), 64):
            _, cache = model.run_with_cache(
                tokens[chunk : chunk + 64], names_filter=hook
            )
            acts.append(cache[hook])
    acts = torch.cat(acts)[row, column].float()
    words = tokens[row, column]
    labels = torch.tensor([letter_of[int(t)] for t in words])
    return probe_f1(acts, labels, words)
