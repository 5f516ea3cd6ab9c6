"""The tokenized SAE architecture: registry, tables, token binding, saving, errors."""

from __future__ import annotations

import pytest
import torch
from conftest import prefill_hf_cache, run_offline
from sae_lens import SAE, TopKSAE, TopKSAEConfig, TrainingSAE
from sae_lens_ext_tokenized import (
    NO_PREVIOUS,
    MissingTokensError,
    TokenizedSAE,
    TokenizedSAEConfig,
    TokenizedStandardSAE,
    TokenizedTopKSAE,
    TokenizedTrainingSAE,
    TokenizedTrainingSAEConfig,
    pack_tokens,
    pair_rows,
    unpack_tokens,
)
from sae_lens_ext_tokenized.keys import TokenKeys

from sae_lens_ext.plugins import get_registry

D_IN, D_SAE, VOCAB = 16, 48, 40


def tokenized_sae(base="topk", pair_buckets=0, seed=0, **extra) -> TokenizedSAE:
    """An inference tokenized SAE with random weights and tables."""
    get_registry()
    torch.manual_seed(seed)
    cfg = TokenizedSAEConfig(
        d_in=D_IN,
        d_sae=D_SAE,
        k=4,
        base_architecture=base,
        vocab_size=VOCAB,
        pair_buckets=pair_buckets,
        **extra,
    )
    cfg.metadata.hook_name = "blocks.0.hook_resid_post"
    cfg.metadata.model_name = "tiny"
    sae = TokenizedSAE(cfg)
    with torch.no_grad():
        for param in sae.parameters():
            param.normal_(0, 0.3)
    return sae


def test_architecture_is_registered_through_the_host_hook(fresh_registry):
    from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY

    registry = get_registry()
    assert "tokenized" in registry.plugin_names()
    assert SAE_CLASS_REGISTRY["tokenized"] == (TokenizedSAE, TokenizedSAEConfig)
    assert SAE_TRAINING_CLASS_REGISTRY["tokenized"][0] is TokenizedTrainingSAE
    registry._architectures_done = False
    registry.register_architectures()  # a second registration is a no-op


@pytest.mark.parametrize(
    ("base", "variant", "sae_lens_class"),
    [("topk", TokenizedTopKSAE, TopKSAE), ("standard", TokenizedStandardSAE, None)],
)
def test_constructor_builds_the_base_variant(base, variant, sae_lens_class):
    sae = tokenized_sae(base)
    assert type(sae) is variant
    assert isinstance(sae, TokenizedSAE)
    if sae_lens_class is not None:
        assert isinstance(sae, sae_lens_class)


def test_reconstruction_is_base_sae_plus_token_row():
    sae = tokenized_sae()
    plain = TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=4))
    plain.load_state_dict(
        {k: v for k, v in sae.state_dict().items() if k != "W_lookup"}
    )
    x = torch.randn(5, D_IN)
    tokens = torch.tensor([0, 3, 3, 39, 7])
    with torch.no_grad(), sae.using_tokens(tokens):
        out = sae(x)
    assert torch.allclose(out, plain(x) + sae.W_lookup[tokens], atol=1e-6)


def test_pair_table_adds_the_hashed_pair_row():
    sae = tokenized_sae(pair_buckets=11)
    tokens = torch.tensor([[5, 6, 7]])
    zeros = torch.zeros(1, 3, D_SAE)
    with torch.no_grad(), sae.using_tokens(tokens):
        out = sae.decode(zeros)
    prev = torch.tensor([[NO_PREVIOUS, 5, 6]])
    rows = pair_rows(TokenKeys(tokens, prev), VOCAB, 11)
    expected = sae.b_dec + sae.W_lookup[tokens] + sae.W_pair_lookup[rows]
    assert torch.allclose(out, expected, atol=1e-6)


def test_pair_hash_spreads_pairs_over_the_buckets():
    cur = torch.arange(VOCAB).repeat(VOCAB + 1)
    prev = torch.arange(-1, VOCAB).repeat_interleave(VOCAB)
    rows = pair_rows(TokenKeys(cur, prev), VOCAB, 1024)
    assert rows.min() >= 0 and rows.max() < 1024
    counts = torch.bincount(rows, minlength=1024).float()
    assert (counts > 0).float().mean() > 0.75  # 1640 pairs fill most buckets
    assert counts.max() <= 8


@pytest.mark.parametrize("base", ["topk", "standard"])
@pytest.mark.parametrize("pair_buckets", [0, 13])
def test_save_model_load_from_disk_round_trip(tmp_path, base, pair_buckets):
    sae = tokenized_sae(base, pair_buckets)
    sae.save_model(tmp_path / "sae")
    loaded = SAE.load_from_disk(tmp_path / "sae")
    assert type(loaded) is type(sae)
    assert loaded.cfg.vocab_size == VOCAB and loaded.cfg.pair_buckets == pair_buckets
    x = torch.randn(2, 6, D_IN)
    tokens = torch.randint(0, VOCAB, (2, 6))
    with torch.no_grad(), sae.using_tokens(tokens), loaded.using_tokens(tokens):
        assert torch.equal(loaded(x), sae(x))


@pytest.mark.parametrize("base", ["topk", "standard"])
def test_training_sae_saves_to_the_same_inference_outputs(tmp_path, base):
    get_registry()
    torch.manual_seed(0)
    cfg = TokenizedTrainingSAEConfig(
        d_in=D_IN, d_sae=D_SAE, k=4, base_architecture=base, vocab_size=VOCAB
    )
    training = TokenizedTrainingSAE(cfg)
    with torch.no_grad():
        for param in training.parameters():
            param.normal_(0, 0.3)
    training.save_model(tmp_path / "checkpoint")
    training.save_inference_model(tmp_path / "inference")
    x, tokens = torch.randn(8, D_IN), torch.randint(0, VOCAB, (8,))
    with torch.no_grad(), training.using_tokens(tokens):
        expected = training(x)
    for folder in ("checkpoint", "inference"):
        loaded = SAE.load_from_disk(tmp_path / folder)
        assert isinstance(loaded, TokenizedSAE)
        with torch.no_grad(), loaded.using_tokens(tokens):
            assert torch.allclose(loaded(x), expected, atol=1e-5)
    reloaded = TrainingSAE.load_from_disk(tmp_path / "checkpoint")
    assert isinstance(reloaded, TokenizedTrainingSAE)


def test_from_pretrained_loads_a_hub_repo_of_ours(tmp_path):
    """``SAE.from_pretrained(repo, folder)`` through a pre-filled offline HF cache."""
    sae = tokenized_sae(pair_buckets=5)
    prefill_hf_cache(tmp_path / "hub", "ours/tokenized-saes", "layer0", sae)
    name, total = run_offline(
        """
        from sae_lens import SAE
        import sae_lens_ext_tokenized  # importing the plugin registers it
        sae = SAE.from_pretrained("ours/tokenized-saes", "layer0")
        from sae_lens_ext.plugins import get_registry
        get_registry()  # the host's hook afterwards is a no-op, not an error
        print("LOADED", type(sae).__name__, float(sae.W_pair_lookup.sum()))
        """,
        tmp_path / "hub",
        tmp_path / "hf-home",
    )
    assert name == "TokenizedTopKSAE"
    assert float(total) == pytest.approx(sae.W_pair_lookup.sum().item(), rel=1e-5)


def test_missing_tokens_raise_and_bindings_are_scoped():
    sae = tokenized_sae()
    x = torch.randn(3, D_IN)
    with pytest.raises(MissingTokensError, match="using_tokens"):
        sae(x)
    with sae.using_tokens(torch.tensor([1, 2, 3])):
        with sae.using_tokens(torch.tensor([4, 5, 6])):
            inner = sae.decode(torch.zeros(3, D_SAE))
        outer = sae.decode(torch.zeros(3, D_SAE))
    assert torch.allclose(
        inner - outer, sae.W_lookup[[4, 5, 6]] - sae.W_lookup[[1, 2, 3]]
    )
    with pytest.raises(MissingTokensError):
        sae.decode(torch.zeros(3, D_SAE))


@pytest.mark.parametrize(
    ("tokens", "error", "match"),
    [
        (torch.tensor([0, 40]), ValueError, "vocab_size=40"),
        (torch.tensor([-1, 2]), ValueError, r"ids in \[-1, 2\]"),
        (torch.tensor([0.0, 1.0]), TypeError, "integer token ids"),
    ],
)
def test_bad_token_ids_are_rejected(tokens, error, match):
    with pytest.raises(error, match=match):
        tokenized_sae().set_tokens(tokens)


def test_tokens_of_the_wrong_shape_are_rejected():
    sae = tokenized_sae()
    sae.set_tokens(torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"leading shape is \(10,\)"):
        sae(torch.randn(10, D_IN))


def test_flat_tokens_need_previous_tokens_for_a_pair_table():
    sae = tokenized_sae(pair_buckets=7)
    with pytest.raises(ValueError, match="prev_tokens"):
        sae.set_tokens(torch.tensor([1, 2, 3]))
    sae.set_tokens(torch.tensor([1, 2, 3]), prev_tokens=torch.tensor([-1, 1, 2]))


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        (dict(vocab_size=0), "d_vocab"),
        (dict(base_architecture="gated"), "not supported"),
        (dict(normalize_activations="layer_norm"), "normalize_activations"),
    ],
)
def test_unsupported_configs_name_the_fix(changes, match):
    kwargs = dict(d_in=D_IN, d_sae=D_SAE, vocab_size=VOCAB) | changes
    with pytest.raises(ValueError, match=match):
        TokenizedSAEConfig(**kwargs)


def test_pack_and_unpack_keep_every_row_with_its_tokens():
    acts = torch.randn(50, D_IN)
    tokens = torch.randint(0, VOCAB, (50,))
    prev = torch.randint(-1, VOCAB, (50,))
    packed = pack_tokens(acts, tokens, prev)
    shuffled = packed[torch.randperm(50)]
    got_acts, keys = unpack_tokens(shuffled, D_IN, VOCAB)
    order = [int(torch.nonzero((acts == row).all(1))[0]) for row in got_acts]
    assert torch.equal(keys.tokens, tokens[order])
    assert torch.equal(keys.prev_tokens, prev[order])


def test_packed_batches_that_lost_precision_are_rejected():
    packed = pack_tokens(torch.randn(4, D_IN), torch.tensor([1, 2, 3, 1001]))
    with pytest.raises(ValueError, match="float32"):
        unpack_tokens(packed.bfloat16(), D_IN, 2000)
    with pytest.raises(ValueError, match=r"\[n, 18\]"):
        unpack_tokens(packed[:, :-1], D_IN, 2000)


def test_capture_feeds_hooked_sae_transformer_input_ids(tiny_model, tiny_tokens):
    from sae_lens import HookedSAETransformer

    model = HookedSAETransformer(tiny_model.cfg)
    model.load_state_dict(tiny_model.state_dict())
    sae = tokenized_sae(pair_buckets=9)
    tokens = tiny_tokens[:4]
    hook = "blocks.0.hook_resid_post"
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=hook)
        with sae.using_tokens(tokens):
            expected = sae(cache[hook])
        with sae.capture_tokens(model):
            _, spliced = model.run_with_cache_with_saes(tokens, saes=[sae])
    assert torch.allclose(spliced[f"{hook}.hook_sae_output"], expected, atol=1e-5)
    lookup = spliced[f"{hook}.hook_sae_lookup"]
    assert torch.allclose(
        lookup[0, 1],
        sae.W_lookup[tokens[0, 1]]
        + sae.W_pair_lookup[
            pair_rows(TokenKeys(tokens[0, 1:2], tokens[0, 0:1]), VOCAB, 9)[0]
        ],
        atol=1e-6,
    )


def test_capture_rejects_a_model_with_another_vocabulary(tiny_model):
    sae = tokenized_sae()
    sae.cfg.vocab_size = 50
    with pytest.raises(ValueError, match="d_vocab=40"):
        sae.capture_tokens(tiny_model)
