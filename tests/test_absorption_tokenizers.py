"""First letters with any tokenizer: boundary conventions give identical labels."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from sae_lens_ext_absorption import (
    AbsorptionAccumulator,
    AbsorptionConfig,
    UnknownConvention,
    WordStartLetters,
    WordTokenizer,
    detect_convention,
)
from sae_lens_ext_absorption.boundaries import previous_tokens

# "<s>the toys walking quickly, 3rd apple\nzebra" as pieces: (core, starts a
# word, ends a word); the same segmentation in every convention
SEGMENTS = [
    ("the", True, True),
    ("toys", True, True),
    ("walk", True, False),
    ("ing", False, True),
    ("quick", True, False),
    ("ly", False, False),
    (",", False, True),
    ("3", True, False),
    ("rd", False, True),
    ("apple", True, True),
    ("\n", False, True),
    ("zebra", True, True),
]
EXPECTED = [-1, 19, 19, 22, -1, 16, -1, -1, -1, -1, 0, -1, 25]  # BOS first
FILLER = [f"{c}{d}" for c in "xyz" for d in "xyz"]  # more vocabulary, unmarked


class PieceTokenizer:
    """A vocabulary of raw pieces with a decode that undoes the markers."""

    def __init__(self, pieces: list[str], texts: list[str]):
        self.pieces, self.texts = pieces, texts

    def __len__(self):
        return len(self.pieces)

    def convert_ids_to_tokens(self, ids):
        return [self.pieces[int(i)] for i in ids]

    def decode(self, ids):
        return "".join(self.texts[int(i)] for i in ids)


def build(convention: str):
    """Tokenizer and token ids of the sentence in one boundary convention."""
    pieces, texts = ["<s>"], ["<s>"]
    for index, (core, starts, ends) in enumerate(SEGMENTS):
        space = starts and index > 0 and SEGMENTS[index - 1][0] != "\n"
        text = (" " if space else "") + core
        if core == "\n":
            piece = {"byte_level": "\u010a", "decoded": "\n"}.get(convention, "<0x0A>")
        elif convention == "byte_level":
            piece = ("\u0120" if space else "") + core
        elif convention == "sentencepiece":
            piece = ("\u2581" if space else "") + core
        elif convention == "decoded":
            piece = text
        elif convention in ("trailing", "trailing_w"):
            marker = "\u2581" if convention == "trailing" else "</w>"
            piece = core + (marker if ends and core != "," else "")
            text = core + (" " if ends and core != "," else "")
        pieces.append(piece)
        texts.append(text)
    for word in FILLER:  # marked whole words, so the convention is visible
        marked = {
            "byte_level": "\u0120" + word,
            "sentencepiece": "\u2581" + word,
            "decoded": " " + word,
            "trailing": word + "\u2581",
            "trailing_w": word + "</w>",
        }[convention]
        pieces.append(marked)
        texts.append(" " + word)
    tokens = torch.arange(len(SEGMENTS) + 1)
    if convention == "decoded":
        return WordTokenizer(texts), tokens
    return PieceTokenizer(pieces, texts), tokens


CONVENTIONS = ["byte_level", "sentencepiece", "decoded", "trailing", "trailing_w"]


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_every_convention_labels_word_starts_only(convention):
    tokenizer, tokens = build(convention)
    previous = torch.cat([torch.tensor([-1]), tokens[:-1]])
    labels = WordStartLetters(tokenizer)(tokens, previous)
    assert labels.tolist() == EXPECTED


def test_conventions_are_detected_from_the_vocabulary():
    names = {c: detect_convention(build(c)[0]).name for c in CONVENTIONS}
    assert names == {
        "byte_level": "byte-level BPE (leading Ġ)",
        "sentencepiece": "SentencePiece (leading ▁)",
        "decoded": "leading space",
        "trailing": "trailing ▁",
        "trailing_w": "trailing </w>",
    }


def test_without_context_only_marked_pieces_are_word_starts():
    tokenizer, tokens = build("byte_level")
    labels = WordStartLetters(tokenizer)(tokens)
    # 'zebra' follows a newline (no marker): unknown without its context
    assert labels.tolist() == [-1, -1, 19, 22, -1, 16, -1, -1, -1, -1, 0, -1, -1]
    trailing, tokens = build("trailing")
    assert (WordStartLetters(trailing)(tokens) < 0).all()


def test_previous_tokens_follow_the_host_batch_layout():
    context = torch.tensor([[0, 5, 6], [0, 7, 8]])
    positions = torch.tensor([[0, 1], [0, 2], [1, 0], [1, 2]])
    batch = SimpleNamespace(token_context=context, positions=positions)
    assert previous_tokens(batch).tolist() == [0, 5, -1, 7]
    assert previous_tokens(SimpleNamespace()) is None


def test_a_vocabulary_without_markers_is_reported():
    tokenizer = WordTokenizer(["ab", "cd", "ef", "gh"])
    with pytest.raises(UnknownConvention, match="where words start"):
        detect_convention(tokenizer)
    accumulator = AbsorptionAccumulator(
        _FakeSAE(), AbsorptionConfig(top_n=2), tokenizer=tokenizer
    )
    assert "could not tell where words start" in accumulator.letter_note


class _FakeSAE:
    """Enough of an SAE for the accumulator's constructor."""

    def __init__(self, d_in=4, d_sae=6):
        self.W_dec = torch.nn.functional.normalize(torch.randn(d_sae, d_in), dim=1)
        self.W_enc = self.W_dec.T.clone()
        self.b_dec = torch.zeros(d_in)
        self.cfg = SimpleNamespace(d_sae=d_sae, d_in=d_in)


def test_fragments_only_give_the_real_reason(tiny_sae):
    """Rows that are all word-internal fragments: the note says so, not that
    the model lacks first letters, and the labelled fraction is reported."""
    tokenizer, _ = build("byte_level")
    fragments = torch.tensor([4, 6, 9] * 40)  # 'ing', 'ly', 'rd'
    context = torch.cat([torch.tensor([3]), fragments])[None]  # 'walk' first
    positions = torch.stack(
        [torch.zeros(len(fragments), dtype=torch.long), torch.arange(1, 121)], 1
    )
    accumulator = AbsorptionAccumulator(
        tiny_sae, AbsorptionConfig(top_n=2), tokenizer=tokenizer
    )
    sae_in = torch.randn(len(fragments), 16)
    with torch.no_grad():
        feats = tiny_sae.encode(sae_in)
    accumulator.update(
        SimpleNamespace(
            sae_in=sae_in,
            feature_acts=feats,
            offset=0,
            tokens=fragments,
            token_context=context,
            positions=positions,
            n=len(fragments),
        )
    )
    report = accumulator.result()
    assert report.first_letter is None
    assert "none of the 120 rows is a word-starting" in report.letters_note
    assert "does not linearly represent" not in report.card()
    assert report.metrics["first_letter_labelled_fraction"] == 0.0
    assert report.metrics["first_letter_fragment_fraction"] == 1.0


CORPUS = [
    "the toys walking quickly, 3rd apple",
    "a zebra walks to the park",
    "apples and toys",
    "talking walking quick",
    "the walk",
    "walk quick the toy",
] * 20


def trained_tokenizer(kind: str):
    """A real BPE tokenizer trained with HF ``tokenizers`` on a tiny corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "byte_level":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=300,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=["<s>"],
        )
    elif kind == "metaspace":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        trainer = trainers.BpeTrainer(vocab_size=60, special_tokens=["<s>"])
    else:
        tokenizer = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        tokenizer.decoder = decoders.BPEDecoder(suffix="</w>")
        trainer = trainers.BpeTrainer(
            vocab_size=70, special_tokens=["<s>"], end_of_word_suffix="</w>"
        )
    tokenizer.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)


@pytest.mark.parametrize("kind", ["byte_level", "metaspace", "suffix"])
def test_real_bpe_tokenizers_label_the_same_words(kind):
    """Three conventions of HF ``tokenizers`` split words differently (e.g.
    'quick'+'ly', 'quickl'+'y', '3r'+'d') but label the same six words."""
    tokenizer = trained_tokenizer(kind)
    ids = tokenizer("the toys walking quickly, 3rd apple zebra")["input_ids"]
    tokens = torch.tensor([tokenizer.convert_tokens_to_ids("<s>"), *ids])
    previous = torch.cat([torch.tensor([-1]), tokens[:-1]])
    labels = WordStartLetters(tokenizer)(tokens, previous)
    assert "".join("abcdefghijklmnopqrstuvwxyz"[i] for i in labels[labels >= 0]) == (
        "ttwqaz"
    )
    assert len(tokens) > 8  # words were split into several pieces
