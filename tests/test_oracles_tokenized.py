"""``apply_lookup_to_input`` against SAE-Lens's own SAE with the table by hand.

With the option off the latents are the base SAE's ``encode(x)``; with it on
they are ``encode(x - T[token])`` (the token table's row is subtracted from
the encoder's input, Dooms & Wilhelm 2024); either way the reconstruction
adds ``T[token]`` back after decoding.  The oracle is a plain SAE-Lens
``TopKSAE`` / ``StandardSAE`` with the same weights and the row applied by
hand, so adding the row instead of subtracting it cannot pass.
"""

from __future__ import annotations

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
from test_tokenized import D_IN, D_SAE, VOCAB, tokenized_sae

PLAIN = {
    "topk": lambda: TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=4)),
    "standard": lambda: StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE)),
}


def plain_copy(sae, base: str):
    """The SAE-Lens base SAE with ``sae``'s weights (tables left out)."""
    plain = PLAIN[base]()
    plain.load_state_dict(
        {k: v for k, v in sae.state_dict().items() if not k.endswith("lookup")}
    )
    return plain


@pytest.mark.parametrize("base", ["topk", "standard"])
@pytest.mark.parametrize("apply_lookup_to_input", [False, True])
def test_lookup_is_subtracted_from_the_input_only_when_asked(
    base, apply_lookup_to_input
):
    sae = tokenized_sae(base, apply_lookup_to_input=apply_lookup_to_input)
    with torch.no_grad():
        sae.W_lookup.mul_(5)  # rows large enough to change which latents fire
    plain = plain_copy(sae, base)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(7, D_IN, generator=generator)
    tokens = torch.tensor([0, 3, 3, 39, 7, 12, 25])
    row = sae.W_lookup[tokens].detach()
    encoder_input = x - row if apply_lookup_to_input else x
    with torch.no_grad(), sae.using_tokens(tokens):
        feats = sae.encode(x)
        out = sae(x)
        expected_feats = plain.encode(encoder_input)
        expected_out = plain.decode(expected_feats) + row
    torch.testing.assert_close(feats, expected_feats, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, expected_out, atol=1e-5, rtol=1e-5)
    # The table row moves the code: the two settings really differ here.
    with torch.no_grad():
        other = plain.encode(x + row if apply_lookup_to_input else x - row)
    assert not torch.allclose(feats, other, atol=1e-3)


def test_training_sae_subtracts_the_packed_tokens_row():
    from sae_lens_ext_tokenized import (
        TokenizedTrainingSAE,
        TokenizedTrainingSAEConfig,
        pack_tokens,
    )

    cfg = TokenizedTrainingSAEConfig(
        d_in=D_IN,
        d_sae=D_SAE,
        k=4,
        vocab_size=VOCAB,
        apply_lookup_to_input=True,
        rescale_acts_by_decoder_norm=False,
    )
    torch.manual_seed(0)
    sae = TokenizedTrainingSAE(cfg)
    with torch.no_grad():
        for param in sae.parameters():
            param.normal_(0, 0.3)
        sae.W_lookup.mul_(5)
    plain = plain_copy(sae, "topk")
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(6, D_IN, generator=generator)
    tokens = torch.tensor([1, 2, 3, 4, 5, 39])
    prev = torch.tensor([-1, 1, 2, 3, 4, 5])
    with torch.no_grad():
        output = sae.training_forward_pass(training_step(pack_tokens(x, tokens, prev)))
        row = sae.W_lookup[tokens]
        expected = plain.encode(x - row)
    torch.testing.assert_close(output.feature_acts, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        output.sae_out, plain.decode(expected) + row, atol=1e-5, rtol=1e-5
    )


def test_lookup_is_subtracted_from_batched_sequences():
    # Activations [batch, seq, d_in] with tokens [batch, seq], as in a model's
    # forward pass: the table row of every position is subtracted.
    sae = tokenized_sae("topk", apply_lookup_to_input=True)
    with torch.no_grad():
        sae.W_lookup.mul_(5)
    plain = plain_copy(sae, "topk")
    x = torch.randn(2, 3, D_IN, generator=torch.Generator().manual_seed(5))
    tokens = torch.tensor([[0, 3, 39], [7, 7, 12]])
    row = sae.W_lookup[tokens].detach()
    with torch.no_grad(), sae.using_tokens(tokens):
        feats = sae.encode(x)
        expected = plain.encode((x - row).reshape(6, D_IN)).reshape(2, 3, D_SAE)
    torch.testing.assert_close(feats, expected, atol=1e-5, rtol=1e-5)


def training_step(sae_in):
    """A training step's input holding the batch ``sae_in``."""
    from sae_lens.saes.sae import TrainStepInput

    return TrainStepInput(
        sae_in=sae_in,
        coefficients={},
        dead_neuron_mask=None,
        n_training_steps=0,
        is_logging_step=False,
    )


def training_sae(d_in: int):
    """A tokenized TopK training SAE (k 4) with a random token table."""
    from sae_lens_ext_tokenized import TokenizedTrainingSAE, TokenizedTrainingSAEConfig

    cfg = TokenizedTrainingSAEConfig(d_in=d_in, d_sae=D_SAE, k=4, vocab_size=VOCAB)
    torch.manual_seed(0)
    sae = TokenizedTrainingSAE(cfg)
    with torch.no_grad():
        sae.W_lookup.normal_(0, 1)
    return sae


@pytest.mark.parametrize("d_in", [D_IN, 300])  # packed width 302: above cached ints
def test_training_sae_takes_unpacked_rows_with_bound_tokens(d_in):
    # Plain activations [n, d_in] or [batch, seq, d_in] (not packed) with the
    # tokens bound by using_tokens train the same as the packed rows, even
    # when seq happens to equal the packed width.
    from sae_lens_ext_tokenized import pack_tokens

    sae = training_sae(d_in)
    width = sae.packed_width
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(2, width, d_in, generator=generator)
    tokens = torch.randint(0, VOCAB, (2, width), generator=generator)
    rows, row_tokens = x.reshape(-1, d_in), tokens.reshape(-1)
    with torch.no_grad():
        packed = sae.training_forward_pass(training_step(pack_tokens(rows, row_tokens)))
        with sae.using_tokens(row_tokens):
            unpacked = sae.training_forward_pass(training_step(rows))
        with sae.using_tokens(tokens):
            sequences = sae.training_forward_pass(training_step(x))
    torch.testing.assert_close(unpacked.sae_out, packed.sae_out)
    torch.testing.assert_close(unpacked.feature_acts, packed.feature_acts)
    torch.testing.assert_close(sequences.sae_out.reshape(-1, d_in), packed.sae_out)


def test_training_batch_of_another_width_is_refused_with_the_fix():
    # Neither d_in nor the packed rows' width: a clear error naming pack_tokens,
    # also for packed columns on a batch with a sequence axis.
    sae = training_sae(D_IN)
    width = sae.packed_width
    for shape in [(4, D_IN + 1), (4, width + 1), (2, 3, width), (D_IN - 1,), ()]:
        with pytest.raises(ValueError, match="training batch of shape .*pack_tokens"):
            sae.training_forward_pass(training_step(torch.zeros(shape)))


def test_training_sae_takes_a_single_activation_vector():
    # [d_in] with one bound token is a batch without a row axis: the same as [1, d_in].
    sae = training_sae(D_IN)
    x = torch.randn(D_IN, generator=torch.Generator().manual_seed(8))
    token = torch.tensor(3)
    with torch.no_grad():
        with sae.using_tokens(token):
            one = sae.training_forward_pass(training_step(x))
        with sae.using_tokens(token[None]):
            row = sae.training_forward_pass(training_step(x[None]))
    torch.testing.assert_close(one.sae_out, row.sae_out[0])
