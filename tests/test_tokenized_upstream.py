"""Tokenized SAEs keyed on an upstream SAE's latents (Pearce's extension), JumpReLU.

- a planted structure: downstream activations hold a component fixed by an
  upstream latent, not by the token; the upstream table recovers it, a token
  table cannot;
- the reconstruction against a brute-force reference built from SAE-Lens's
  own ``encode``/``decode`` (TopK, ReLU, JumpReLU bases; codes and top-1 keys;
  upstream SAEs of other architectures, rescaled decoders, bf16);
- save / load / ``from_pretrained`` / splice round trips for every lookup kind,
  the splice reading the upstream codes in the same forward pass;
- the command line and its errors.
"""

from __future__ import annotations

import pytest
import torch
from conftest import (
    prefill_hf_cache,
    register_model_release,
    run_offline,
    runner_config,
)
from sae_lens import (
    SAE,
    HookedSAETransformer,
    JumpReLUSAE,
    JumpReLUSAEConfig,
    SAETrainer,
    StandardSAE,
    StandardSAEConfig,
    TopKSAE,
    TopKSAEConfig,
)
from sae_lens.config import SAETrainerConfig
from sae_lens_ext_tokenized import (
    MissingTokensError,
    TokenizedSAE,
    TokenizedSAEConfig,
    TokenizedSAETrainingRunner,
    TokenizedTrainingSAE,
    TokenizedTrainingSAEConfig,
    TrainingOptions,
    pack_tokens,
    train_tokenized_sae,
)
from sae_lens_ext_tokenized.effective_tokens import (
    classify,
    decode_contexts,
    determined_share,
    effective_tokens,
    ngram_index,
)
from sae_lens_ext_tokenized.lookup_init import (
    init_tables_from_means,
    init_upstream_table,
)
from sae_lens_ext_tokenized.upstream import upstream_fields, upstream_term

from sae_lens_ext import load_sae
from sae_lens_ext.plugins import get_registry

UP_HOOK, DOWN_HOOK = "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"
VOCAB, D_IN, D_UP_IN, D_UP = 40, 16, 12, 24


def upstream_topk(d_in=D_UP_IN, d_sae=D_UP, k=3, hook=UP_HOOK, seed=0) -> TopKSAE:
    """A random SAE-Lens TopK SAE standing for the upstream SAE."""
    torch.manual_seed(seed)
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k))
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.5)
        sae.W_dec.normal_(0, 0.5)
    sae.cfg.metadata.hook_name = hook
    sae.cfg.metadata.model_name = "tiny2"
    sae.cfg.metadata.context_size = 12
    sae.cfg.metadata.prepend_bos = True
    return sae


# -- the planted structure ----------------------------------------------------


def planted_batches(upstream, seed):
    """Rows ``x = E[token] + g @ V + s @ F + noise`` packed with token ids and
    upstream activations.

    ``g`` is the upstream SAE's code of random upstream activations drawn
    independently of the token, so the planted part ``g @ V`` is fixed by the
    upstream latents and carries no information about the token; ``s @ F``
    are sparse features (2 of 32 active) that only latents can explain.
    """
    generator = torch.Generator().manual_seed(seed)
    embed = torch.randn(VOCAB, D_IN, generator=generator) * 2
    planted = torch.randn(D_UP, D_IN, generator=generator)
    planted = planted / planted.norm(dim=1, keepdim=True) * 1.5
    features = torch.randn(32, D_IN, generator=generator)
    features = features / features.norm(dim=1, keepdim=True)

    def draw(n):
        tokens = torch.randint(0, VOCAB, (n,), generator=generator)
        up_acts = torch.randn(n, D_UP_IN, generator=generator) * 2
        with torch.no_grad():
            codes = upstream.encode(up_acts)
        part = codes @ planted
        active = torch.rand(n, 32, generator=generator).argsort(dim=1)[:, :2]
        sparse = torch.zeros(n, 32).scatter_(
            1, active, 1 + 2 * torch.rand(n, 2, generator=generator)
        )
        noise = 0.05 * torch.randn(n, D_IN, generator=generator)
        x = embed[tokens] + part + sparse @ features + noise
        return pack_tokens(x, tokens, None, up_acts), part

    return draw, planted


def train_planted(lookup, upstream, draw, steps=200, upstream_init="lstsq"):
    """A tokenized TopK training SAE (k=2) on planted rows, SAETrainer unmodified
    (a token-only SAE gets the rows without the upstream columns)."""
    get_registry()
    torch.manual_seed(0)
    extra = (
        upstream_fields(upstream, "tests/planted", "up") if lookup != "token" else {}
    )
    cfg = TokenizedTrainingSAEConfig(
        d_in=D_IN, d_sae=32, k=2, vocab_size=VOCAB, lookup=lookup, **extra
    )
    sae = TokenizedTrainingSAE(cfg)
    if extra:
        sae.attach_upstream(upstream)
    width = sae.packed_width
    init_rows = draw(4096)[0][:, :width]
    init_tables_from_means(sae, init_rows)  # b_dec and, if any, the token table
    if extra and upstream_init == "lstsq":
        init_upstream_table(sae, init_rows)
    batches = (draw(256)[0][:, :width] for _ in range(steps + 1))
    trainer = SAETrainer(
        SAETrainerConfig(
            total_training_samples=steps * 256,
            train_batch_size_samples=256,
            lr=3e-3,
            lr_end=3e-3,
        ),  # fmt: skip
        sae,
        batches,
    )
    for _ in range(steps):
        trainer.step(next(batches))
        trainer.n_training_steps += 1
    return sae


def lookup_share(sae, rows, planted_part, table):
    """Share of the planted part's variance explained by one table's term."""
    _, keys = sae.unpack(rows[:, : sae.packed_width])
    with torch.no_grad():
        if table == "upstream":
            term = upstream_term(keys.upstream_codes, sae.W_upstream_lookup, "codes")
        else:
            term = sae.W_lookup[keys.tokens]
    target = planted_part - planted_part.mean(0)
    explained = term - term.mean(0)
    return 1 - (target - explained).pow(2).sum() / target.pow(2).sum()


@pytest.mark.parametrize("upstream_init", ["lstsq", "zeros"])
def test_upstream_table_recovers_a_component_the_token_table_cannot(upstream_init):
    upstream = upstream_topk()
    draw, planted = planted_batches(upstream, seed=5)
    held_out, part = draw(4096)
    both = train_planted("both", upstream, draw, upstream_init=upstream_init)
    token = train_planted("token", upstream, draw)

    cosines = torch.nn.functional.cosine_similarity(
        both.W_upstream_lookup.detach(), planted, dim=1
    )
    fired = (upstream.encode(held_out[:, D_IN + 2 :]) > 0).sum(0) >= 50
    assert fired.sum() >= 12  # most upstream latents are exercised
    if upstream_init == "lstsq":  # the default: every planted direction
        assert cosines[fired].min() >= 0.95, cosines
        assert lookup_share(both, held_out, part, "upstream") >= 0.95
    else:  # from zero, 200 steps of training alone: most of them
        assert cosines[fired].mean() >= 0.95, cosines
        assert lookup_share(both, held_out, part, "upstream") >= 0.85
    # The token table cannot: the planted part is independent of the token.
    assert lookup_share(token, held_out, part, "token") < 0.1
    # ... nor can any per-token table: the leave-one-out per-token means of the
    # planted part (the best such table) explain about none of it.
    tokens = held_out[:, D_IN].long()
    sums = torch.zeros(VOCAB, D_IN).index_add_(0, tokens, part)
    counts = torch.bincount(tokens, minlength=VOCAB).float().unsqueeze(1)
    loo = (sums[tokens] - part) / (counts[tokens] - 1)
    centred = part - part.mean(0)
    best_share = (
        1 - (centred - (loo - part.mean(0))).pow(2).sum() / centred.pow(2).sum()
    )
    assert best_share < 0.1


# -- brute-force reference ----------------------------------------------------

PLAIN = {
    "topk": lambda: TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=48, k=4)),
    "standard": lambda: StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=48)),
    "jumprelu": lambda: JumpReLUSAE(JumpReLUSAEConfig(d_in=D_IN, d_sae=48)),
}


def other_upstream(kind: str):
    """Upstream SAEs unlike ours: ReLU with a non-unit decoder and nonzero b_dec,
    JumpReLU, a bf16 TopK."""
    torch.manual_seed(11)
    if kind == "standard":
        sae = StandardSAE(StandardSAEConfig(d_in=D_UP_IN, d_sae=D_UP))
    elif kind == "jumprelu":
        sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=D_UP_IN, d_sae=D_UP))
    else:
        sae = TopKSAE(TopKSAEConfig(d_in=D_UP_IN, d_sae=D_UP, k=3, dtype="bfloat16"))
    with torch.no_grad():
        for param in sae.parameters():
            param.copy_(torch.randn_like(param.float()).to(param.dtype) * 0.4)
        sae.W_dec.mul_(torch.linspace(0.5, 2.0, D_UP).unsqueeze(1).to(sae.W_dec.dtype))
        if kind == "jumprelu":
            sae.threshold.fill_(0.3)
    sae.cfg.metadata.hook_name = UP_HOOK
    return sae


def reference_codes(upstream, up_acts, key):
    """The upstream code by SAE-Lens's ``encode``, turned into the table's weights."""
    codes = upstream.encode(up_acts.to(upstream.W_dec.dtype)).float()
    if key == "codes":
        return codes
    weights = torch.zeros_like(codes)
    top = codes.argmax(dim=1)
    fired = codes.max(dim=1).values > 0
    weights[torch.arange(len(codes)), top] = fired.float()
    return weights


@pytest.mark.parametrize("base", ["topk", "standard", "jumprelu"])
@pytest.mark.parametrize("lookup", ["upstream_sae", "both"])
@pytest.mark.parametrize(
    ("key", "upstream_kind"),
    [("codes", "standard"), ("top1", "jumprelu"), ("codes", "topk-bf16")],
)
def test_reconstruction_matches_sae_lens_encode_decode_by_hand(
    base, lookup, key, upstream_kind
):
    get_registry()
    upstream = other_upstream(upstream_kind)
    cfg = TokenizedSAEConfig(
        d_in=D_IN, d_sae=48, k=4, base_architecture=base, vocab_size=VOCAB,
        lookup=lookup, upstream_key=key, **upstream_fields(upstream, "rel", "up"),
    )  # fmt: skip
    sae = TokenizedSAE(cfg)
    with torch.no_grad():
        for param in sae.parameters():
            param.normal_(0, 0.3)
        if base == "jumprelu":
            sae.threshold.fill_(0.2)
    sae.attach_upstream(upstream)
    plain = PLAIN[base]()
    plain.load_state_dict(
        {k: v for k, v in sae.state_dict().items() if not k.endswith("lookup")}
    )
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(9, D_IN, generator=generator)
    up_acts = torch.randn(9, D_UP_IN, generator=generator)
    tokens = torch.randint(0, VOCAB, (9,), generator=generator)
    with torch.no_grad():
        weights = reference_codes(upstream, up_acts, key)
        assert (weights.sum(1) > 0).any()  # the upstream term is really exercised
        expected = plain.decode(plain.encode(x)) + weights @ sae.W_upstream_lookup
        if lookup == "both":
            expected = expected + sae.W_lookup[tokens]
        with sae.using_tokens(tokens, upstream_acts=up_acts):
            out = sae(x)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_an_upstream_lookup_without_codes_names_the_fix():
    upstream = upstream_topk()
    cfg = TokenizedSAEConfig(
        d_in=D_IN, d_sae=48, k=4, vocab_size=VOCAB, lookup="upstream_sae",
        **upstream_fields(upstream, "rel", "up"),
    )  # fmt: skip
    sae = TokenizedSAE(cfg)
    sae.attach_upstream(upstream)
    with pytest.raises(MissingTokensError, match="upstream_acts"):
        with sae.using_tokens(torch.zeros(3, dtype=torch.long)):
            sae(torch.randn(3, D_IN))
    with pytest.raises(ValueError, match="leading shape"):
        with sae.using_tokens(upstream_acts=torch.randn(4, D_UP_IN)):
            sae(torch.randn(3, D_IN))
    with pytest.raises(ValueError, match="upstream_fields"):
        TokenizedSAEConfig(d_in=D_IN, d_sae=8, vocab_size=VOCAB, lookup="both")
    with pytest.raises(ValueError, match="was built for"):
        sae.attach_upstream(upstream_topk(d_sae=D_UP + 1))


# -- round trips on a two-layer model -------------------------------------------


@pytest.fixture(scope="module")
def tiny2():
    """A 2-layer TransformerLens model (vocab 40, width 12) as a HookedSAETransformer."""
    from transformer_lens import HookedTransformerConfig

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=D_UP_IN, n_ctx=12, d_head=6, n_heads=2, d_mlp=24,
        d_vocab=VOCAB, act_fn="gelu", normalization_type="LN", device="cpu",
        model_name="tiny2",
    )  # fmt: skip
    return HookedSAETransformer(cfg).eval()


@pytest.fixture(scope="module")
def corpus():
    """200 random sequences of 12 tokens, BOS (0) first."""
    tokens = torch.randint(
        1, VOCAB, (200, 12), generator=torch.Generator().manual_seed(2)
    )
    tokens[:, 0] = 0
    return tokens


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory):
    """A small release of our own: an upstream TopK SAE at blocks.0 in ``up0/``."""
    folder = tmp_path_factory.mktemp("release")
    upstream_topk(d_in=D_UP_IN, d_sae=D_UP).save_model(folder / "up0")
    return folder


LOOKUP_KINDS = [("token", "codes"), ("upstream_sae", "codes"), ("both", "codes"),
                ("upstream_sae", "top1"), ("both", "top1")]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tiny2, corpus, release_dir, tmp_path_factory):
    """One trained SAE per lookup kind at blocks.1, saved in SAE-Lens format."""
    out = tmp_path_factory.mktemp("trained")
    saved = {}
    for lookup, key in LOOKUP_KINDS:
        folder = out / f"{lookup}-{key}"
        train_tokenized_sae(
            tiny2, DOWN_HOOK, corpus,
            TrainingOptions(d_sae=32, k=2, steps=30, batch_size=64, eval_every=30,
                            init_tokens=800, lookup=lookup, upstream_key=key,
                            upstream=f"{release_dir}/up0"),
            out_dir=folder, progress=False,
        )  # fmt: skip
        saved[(lookup, key)] = folder
    return saved


def spliced_by_hand(model, sae, tokens):
    """Logits with the SAE spliced in at every position, its keys bound by hand
    from a cached clean run (the upstream hook's activations, the input ids)."""
    _, cache = model.run_with_cache(tokens, names_filter=UP_HOOK)

    def splice(acts, hook):
        upstream_acts = cache[UP_HOOK] if sae.cfg.lookup != "token" else None
        with sae.using_tokens(tokens, upstream_acts=upstream_acts):
            return sae(acts)

    return model.run_with_hooks(tokens, fwd_hooks=[(DOWN_HOOK, splice)])


@pytest.mark.parametrize(("lookup", "key"), LOOKUP_KINDS)
def test_save_load_and_splice_round_trip(
    tiny2, corpus, release_dir, trained, lookup, key
):
    folder = trained[(lookup, key)]
    for loaded in (SAE.load_from_disk(folder), load_sae(str(folder))):
        assert isinstance(loaded, TokenizedSAE)
        assert (loaded.cfg.lookup, loaded.cfg.upstream_key) == (lookup, key)
        assert loaded.cfg.metadata.hook_name == DOWN_HOOK
    if lookup != "token":
        assert loaded.cfg.upstream_release == str(release_dir / "up0")
        assert loaded.cfg.upstream_hook_name == UP_HOOK
        original = load_sae(str(release_dir), "up0")
        assert torch.equal(loaded.upstream_sae.W_enc, original.W_enc)
        assert loaded.W_upstream_lookup.abs().sum() > 0
    tokens = corpus[:5]
    with torch.no_grad():
        expected = spliced_by_hand(tiny2, loaded, tokens)
        with loaded.capture_tokens(tiny2):
            logits = tiny2.run_with_saes(tokens, saes=[loaded])
        clean = tiny2(tokens)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(logits, clean, atol=1e-3)  # the SAE really ran
    # After the `with` block the hooks are gone: no keys are bound any more.
    loaded.clear_tokens()
    with pytest.raises(MissingTokensError):
        tiny2.run_with_saes(tokens, saes=[loaded])


def test_capture_refuses_an_upstream_hook_after_the_sae(tiny2, release_dir):
    upstream = load_sae(str(release_dir), "up0")
    upstream.cfg.metadata.hook_name = "blocks.1.hook_resid_pre"
    cfg = TokenizedSAEConfig(
        d_in=D_UP_IN, d_sae=8, k=2, vocab_size=VOCAB, lookup="upstream_sae",
        **upstream_fields(upstream, str(release_dir), "up0"),
    )  # fmt: skip
    cfg.metadata.hook_name = "blocks.0.hook_resid_post"
    sae = TokenizedSAE(cfg)
    sae.attach_upstream(upstream)
    with pytest.raises(ValueError, match="does not run before"):
        sae.capture_tokens(tiny2)


@pytest.mark.slow  # a fresh Python that imports SAE-Lens and the plugins
def test_from_pretrained_brings_back_the_upstream_sae(tmp_path, trained):
    """A Hub repo holding both SAEs; the downstream one names the upstream by repo/id."""
    sae = SAE.load_from_disk(trained[("both", "codes")])
    upstream = sae.upstream_sae
    sae.cfg.upstream_release, sae.cfg.upstream_sae_id = "ours/two-hooks", "layer0"
    prefill_hf_cache(tmp_path / "hub", "ours/two-hooks", "layer1", sae)
    upstream.save_model(
        next((tmp_path / "hub").glob("models--ours--two-hooks/snapshots/*")) / "layer0"
    )
    x, up_acts = torch.randn(3, D_UP_IN), torch.randn(3, D_UP_IN)
    tokens = torch.tensor([1, 2, 3])
    with torch.no_grad(), sae.using_tokens(tokens, upstream_acts=up_acts):
        expected = sae(x).sum().item()
    torch.save({"x": x, "up": up_acts, "tokens": tokens}, tmp_path / "inputs.pt")
    (total,) = run_offline(
        f"""
        import torch
        from sae_lens import SAE
        import sae_lens_ext_tokenized
        sae = SAE.from_pretrained("ours/two-hooks", "layer1")
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        with torch.no_grad(), sae.using_tokens(inputs["tokens"], upstream_acts=inputs["up"]):
            print("LOADED", sae(inputs["x"]).sum().item())
        """,
        tmp_path / "hub",
        tmp_path / "hf-home",
    )
    assert float(total) == pytest.approx(expected, rel=1e-5)


# -- JumpReLU training ----------------------------------------------------------


def test_jumprelu_tokenized_sae_trains_saves_and_loads(
    tiny2, corpus, release_dir, tmp_path
):
    run = train_tokenized_sae(
        tiny2, DOWN_HOOK, corpus,
        TrainingOptions(base_architecture="jumprelu", d_sae=32, steps=40, batch_size=64,
                        eval_every=20, init_tokens=800, lookup="both",
                        upstream=f"{release_dir}/up0", l0_coefficient=0.1),
        out_dir=tmp_path / "jr", progress=False,
    )  # fmt: skip
    curve = run.curve
    assert curve.mse.iloc[-1] < curve.mse.iloc[0]
    assert 0 < curve.l0.iloc[-1] < 32
    loaded = SAE.load_from_disk(tmp_path / "jr")
    assert type(loaded).__name__ == "TokenizedJumpReLUSAE"
    assert loaded.threshold.shape == (32,)


# -- command line -----------------------------------------------------------------


@pytest.fixture
def tiny2_release(tiny2, corpus, fresh_registry):
    """The tiny 2-layer model registered as release ``tiny2``."""
    register_model_release("tiny2", tiny2, corpus)


def invoke(args):
    from click.testing import CliRunner

    from sae_lens_ext.cli import build_cli

    return CliRunner().invoke(build_cli(), args)


BASE_ARGS = ["train-tokenized", "--model", "tiny2", "--hook", DOWN_HOOK, "--d-sae", "16",
             "--k", "2", "--steps", "10", "--batch-size", "64"]  # fmt: skip


def test_cli_trains_an_upstream_lookup(tiny2_release, release_dir, tmp_path):
    out = tmp_path / "run"
    args = [*BASE_ARGS, "--out", str(out), "--lookup", "upstream_sae",
            "--upstream", f"{release_dir}/up0"]  # fmt: skip
    done = invoke(args)
    assert done.exit_code == 0, done.output
    assert "ce_loss_spliced" in done.output
    sae = SAE.load_from_disk(out / "sae")
    assert sae.cfg.lookup == "upstream_sae"
    assert sae.cfg.upstream_release == str(release_dir / "up0")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--lookup", "both"], "needs --upstream"),
        (["--lookup", "both", "--upstream", "nowhere/none"], "nowhere"),
        (
            [
                "--lookup",
                "both",
                "--upstream",
                "{release}/up0",
                "--hook",
                "blocks.0.hook_resid_pre",
            ],
            "does not run before",
        ),  # fmt: skip
    ],
)
def test_cli_rejects_a_bad_upstream_before_training(
    tiny2_release, release_dir, tmp_path, extra, message
):
    out = tmp_path / "run"
    extra = [e.replace("{release}", str(release_dir)) for e in extra]
    done = invoke([*BASE_ARGS, "--out", str(out), *extra])
    assert done.exit_code != 0
    assert message in done.output
    assert not (out / "sae").exists()


# -- SAE-Lens's training runner ---------------------------------------------------


def runner_for(lookup, key, tiny2, corpus, release_dir, tmp_path, hook=DOWN_HOOK):
    """A TokenizedSAETrainingRunner on the tiny 2-layer model, upstream ``up0``."""
    from datasets import Dataset

    upstream = load_sae(str(release_dir / "up0"))
    sae_cfg = TokenizedTrainingSAEConfig(
        d_in=D_UP_IN, d_sae=32, k=2, vocab_size=VOCAB, lookup=lookup,
        upstream_key=key, **upstream_fields(upstream, str(release_dir / "up0"), None),
    )  # fmt: skip
    return TokenizedSAETrainingRunner(
        runner_config(tmp_path, sae_cfg, hook_name=hook, model_name="tiny2", lr=1e-2),
        override_dataset=Dataset.from_dict({"input_ids": corpus.tolist()}),
        override_model=tiny2,
    )


def test_runner_store_packs_the_upstream_hook_of_the_same_forward_pass(
    tiny2, corpus, release_dir, tmp_path
):
    runner = runner_for("both", "codes", tiny2, corpus, release_dir, tmp_path)
    rows = runner.activations_store.get_filtered_llm_batch()
    first = corpus[:8]
    _, cache = tiny2.run_with_cache(first, names_filter=[UP_HOOK, DOWN_HOOK])
    assert rows.shape == (8 * 12, D_UP_IN + 2 + D_UP_IN)
    down, up = (
        cache[DOWN_HOOK].reshape(-1, D_UP_IN),
        cache[UP_HOOK].reshape(-1, D_UP_IN),
    )
    torch.testing.assert_close(rows[:, :D_UP_IN], down, atol=1e-5, rtol=1e-5)
    assert torch.equal(rows[:, D_UP_IN].long(), first.reshape(-1))
    torch.testing.assert_close(rows[:, D_UP_IN + 2 :], up, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(up, down, atol=1e-2)  # two different hooks


@pytest.mark.parametrize(
    ("lookup", "key"), [("both", "codes"), ("upstream_sae", "top1")]
)
def test_sae_lens_runner_trains_an_upstream_lookup(
    tiny2, corpus, release_dir, tmp_path, lookup, key
):
    torch.manual_seed(0)
    runner_for(lookup, key, tiny2, corpus, release_dir, tmp_path).run()
    loaded = SAE.load_from_disk(tmp_path / "out")
    assert isinstance(loaded, TokenizedSAE)
    assert (loaded.cfg.lookup, loaded.cfg.upstream_key) == (lookup, key)
    assert loaded.cfg.upstream_release == str(release_dir / "up0")
    assert loaded.cfg.upstream_hook_name == UP_HOOK
    tokens = corpus[150:160]
    _, cache = tiny2.run_with_cache(tokens, names_filter=[UP_HOOK, DOWN_HOOK])
    acts = cache[DOWN_HOOK]
    with torch.no_grad(), loaded.using_tokens(tokens, upstream_acts=cache[UP_HOOK]):
        error = (loaded(acts) - acts).pow(2).mean()
        trained_table = loaded.W_upstream_lookup.clone()
        loaded.W_upstream_lookup.zero_()  # the table the runner started from
        error_without_table = (loaded(acts) - acts).pow(2).mean()
    # the runner trained the upstream table from the packed upstream activations,
    # and it carries part of the reconstruction on sequences it did not see
    assert trained_table.abs().sum() > 0
    assert error < 0.9 * error_without_table
    loaded.W_upstream_lookup.data.copy_(trained_table)
    with torch.no_grad():
        expected = spliced_by_hand(tiny2, loaded, tokens)
        with loaded.capture_tokens(tiny2):
            logits = tiny2.run_with_saes(tokens, saes=[loaded])
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


def test_runner_refuses_an_upstream_hook_after_its_own_before_training(
    tiny2, corpus, release_dir, tmp_path
):
    with pytest.raises(ValueError, match="does not run before"):
        runner_for(
            "upstream_sae", "codes", tiny2, corpus, release_dir, tmp_path,
            hook="blocks.0.hook_resid_pre",
        )  # fmt: skip
    assert not (tmp_path / "out").exists()


# -- effective tokens --------------------------------------------------------------


def test_ngram_units_are_told_apart():
    """A latent on every 'b' is a token unit, one on 'b' only after 'a' a bigram, one
    on 'c a b' a trigram; one firing at random on 20% of positions none of them."""
    generator = torch.Generator().manual_seed(0)
    cur = torch.randint(0, 6, (3000,), generator=generator)
    prev = torch.randint(0, 6, (3000,), generator=generator)
    prev2 = torch.randint(0, 6, (3000,), generator=generator)
    grams = torch.stack([prev2, prev, cur], dim=1)
    index = ngram_index(grams)
    units = {}
    for name, fired in {
        "on b": cur == 1,
        "on a b": (cur == 1) & (prev == 0),
        "on c a b": (cur == 1) & (prev == 0) & (prev2 == 2),
        "random": torch.rand(3000, generator=generator) < 0.2,
    }.items():
        determined = [determined_share(fired, *index[n], 0.5, 5) for n in (1, 2, 3)]
        units[name] = classify(determined, 0.5)
    assert units == {
        "on b": "token",
        "on a b": "bigram",
        "on c a b": "trigram",
        "random": "context",
    }


@pytest.mark.parametrize("key", ["codes", "top1"])
def test_effective_token_weights_follow_the_key(tiny2, corpus, trained, key):
    """Firings and weights against the upstream SAE's ``encode`` by hand: with
    the codes key a latent fires where ``g_j > 0`` and weighs ``mean g_j |U[j]|``;
    with the top-1 key only where it is the most active latent, weighing ``|U[j]|``."""
    sae = SAE.load_from_disk(trained[("upstream_sae", key)])
    tokens = corpus[:40]
    top, _ = effective_tokens(sae, tiny2, tokens, top=8, min_firings=1)
    _, cache = tiny2.run_with_cache(tokens, names_filter=UP_HOOK)
    with torch.no_grad():
        codes = sae.upstream_sae.encode(cache[UP_HOOK][:, 1:].reshape(-1, D_UP_IN))
    norms = sae.W_upstream_lookup.detach().norm(dim=1)
    assert len(top) == 8
    for row in top.itertuples():
        g = codes[:, row.latent]
        if key == "codes":
            fired = g > 0
            expected = g[fired].mean() * norms[row.latent]
        else:
            fired = (codes.argmax(dim=1) == row.latent) & (codes.max(dim=1).values > 0)
            expected = norms[row.latent]
        assert row.firings == int(fired.sum())
        assert row.weight == pytest.approx(float(expected), rel=1e-4)
    if key == "top1":  # fewer firings than the codes key would count
        assert (top.firings < (codes[:, top.latent] > 0).sum(0).numpy()).any()


def word_tokenizer(kind: str):
    """A word-level HF tokenizer whose pieces mark word starts the way
    SentencePiece (``▁upon``, decoded without its space when alone) or GPT-2
    (``Ġupon``) does; the stories260K tokenizer (Llama-style) behaves like the first."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    marker = "\u2581" if kind == "metaspace" else "\u0120"
    words = ["<s>", f"{marker}Once", f"{marker}upon", f"{marker}a", "time", ","]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, "<s>"))
    if kind == "metaspace":
        tokenizer.decoder = decoders.Metaspace()
    else:
        tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)


@pytest.mark.parametrize("kind", ["metaspace", "byte_level"])
def test_effective_token_contexts_keep_word_starts(kind):
    """The current token shows its leading space, as it reads in the text, with a
    SentencePiece-style tokenizer too (found on stories260K: ``decode([id])`` of
    ``▁upon`` is ``upon``, so every context read as one glued word)."""
    import pandas as pd

    tokenizer = word_tokenizer(kind)
    if kind == "metaspace":  # what broke: the piece alone loses its space
        assert tokenizer.decode([2]) == "upon"
    table = pd.DataFrame({"contexts": [[[1, 2, 3], [-1, -1, 2], [3, 4, 5]]]})
    shown = decode_contexts(table, tokenizer).contexts[0].split(" | ")
    assert shown[0].endswith("upon[ a]")
    assert shown[1] == "<start><start>[ upon]"
    assert shown[2].endswith("time[,]")


def odd_width_upstream_sae(lookup="upstream_sae"):
    """A training SAE of d_in 7 keyed on an attached upstream TopK SAE of d_in 5."""
    upstream = upstream_topk(d_in=5, d_sae=6, k=2)
    cfg = TokenizedTrainingSAEConfig(
        d_in=7, d_sae=8, k=2, vocab_size=VOCAB, lookup=lookup,
        **upstream_fields(upstream, "tests/planted", "up"),
    )  # fmt: skip
    sae = TokenizedTrainingSAE(cfg)
    sae.attach_upstream(upstream)
    return sae, upstream


def test_packed_rows_of_odd_widths_split_back_into_their_parts():
    # Widths with bit 1 set (7 = 0b111 activations, 5 = 0b101 upstream): here
    # d_in + 2 = 9 differs from d_in | 2 = 7 and d_in ^ 2 = 5, which equal it
    # for the even test widths (16 | 2 = 16 + 2).
    sae, upstream = odd_width_upstream_sae()
    generator = torch.Generator().manual_seed(3)
    acts = torch.randn(10, 7, generator=generator)
    up_acts = torch.randn(10, 5, generator=generator) * 2
    tokens = torch.randint(0, VOCAB, (10,), generator=generator)
    prev = torch.randint(0, VOCAB, (10,), generator=generator)
    batch = pack_tokens(acts, tokens, prev, up_acts)
    assert sae.packed_width == 7 + 2 + 5 == batch.shape[1]
    got, keys = sae.unpack(batch)
    assert torch.equal(got, acts)
    assert torch.equal(keys.tokens, tokens) and torch.equal(keys.prev_tokens, prev)
    with torch.no_grad():
        codes = upstream.encode(up_acts)  # SAE-Lens's own encode of the last 5 columns
    assert (codes > 0).any(dim=1).all()
    assert torch.equal(keys.upstream_codes, codes)


def test_upstream_codes_carry_no_graph_and_follow_the_activations_device():
    sae, upstream = odd_width_upstream_sae()
    # Activations that require grad (a model's hook during a splice): the
    # codes are a key, not part of the graph, so no gradient reaches the model.
    up_acts = torch.randn(4, 5, requires_grad=True)
    codes = sae.upstream_codes(up_acts)
    assert not codes.requires_grad and codes.grad_fn is None
    # Activations on another device (meta stands in for a GPU here): the
    # upstream SAE moves to them, so its codes are computed where they live.
    codes = sae.upstream_codes(torch.randn(4, 5, device="meta"))
    assert codes.device.type == "meta" and upstream.W_dec.device.type == "meta"


@pytest.mark.parametrize("lookup", ["upstream_sae", "both"])
@pytest.mark.parametrize("code_rows", [1, 3])
def test_upstream_codes_for_other_rows_than_the_tokens_are_refused(lookup, code_rows):
    # Tokens for 4 rows, upstream activations for 1 or 3: never broadcast one
    # row's code over the batch, whether or not the SAE also has a token table.
    sae, _ = odd_width_upstream_sae(lookup)
    up_acts = torch.randn(code_rows, 5)
    with sae.using_tokens(torch.arange(4), upstream_acts=up_acts):
        with pytest.raises(ValueError, match=r"leading shape \[\(\d,\), \(4,\)\]"):
            sae(torch.randn(4, 7))  # the decoder adds the table term


def test_a_token_and_upstream_lookup_without_tokens_names_the_fix():
    # Upstream activations bound but no token ids, for an SAE with a token table too.
    sae, _ = odd_width_upstream_sae("both")
    with sae.using_tokens(upstream_acts=torch.randn(4, 5)):
        with pytest.raises(MissingTokensError, match="token id of every activation"):
            sae(torch.randn(4, 7))


def test_binding_options_are_keyword_only_after_the_token_ids():
    sae, _ = odd_width_upstream_sae("both")
    tokens, up_acts = torch.arange(4), torch.randn(4, 5)
    with pytest.raises(TypeError, match="positional"):
        sae.set_tokens(tokens, None, up_acts)
    with pytest.raises(TypeError, match="positional"):
        with sae.using_tokens(tokens, None, up_acts):
            pass
    with sae.using_tokens(tokens=tokens, prev_tokens=None, upstream_acts=up_acts):
        assert sae(torch.randn(4, 7)).shape == (4, 7)
