"""CE loss and KL divergence with SAEs spliced into the model, sharing what can be.

:func:`downstream_metrics` measures one SAE, :func:`downstream_metrics_many`
several SAEs at the same hook on the same tokens (a sweep's SAEs).  Per
chunk of ``LOGIT_CHUNK`` sequences there is one clean pass and one
zero-ablated pass for all the SAEs, then one spliced pass per SAE; each
SAE's sums run over the chunks in the same order as for a single SAE, so
its metrics are the ones :func:`downstream_metrics` gives it alone (the
same floating-point operations on the same inputs).

On a TransformerLens ``HookedTransformer`` and a hook inside a block
(``blocks.<L>.*``), the ablated and spliced passes do not recompute the
layers before the hook: the clean pass keeps the residual stream where they
diverge and they resume there (``start_at_layer``): at block ``L + 1`` with
the edited ``hook_resid_post`` of block ``L``, at block ``L`` with the
edited ``hook_resid_pre``, and for other hooks of block ``L`` at block
``L`` from its clean ``hook_resid_pre`` with the edit as a hook.  The
blocks before are deterministic functions of the tokens, so the resumed
pass computes what the whole pass would (tested against whole passes).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .reconstruction import at_positions, splice

LOGIT_CHUNK = 8
_BLOCK_HOOK = re.compile(r"blocks\.(\d+)\.(.+)")


@dataclass(frozen=True)
class ResumePoint:
    """Where an edited pass resumes: the block, the clean activation it starts
    from, and whether the edit applies to that activation (else it is a hook)."""

    layer: int
    capture: str
    edits_capture: bool


def resume_point(model, hook_name: str) -> ResumePoint | None:
    """Where passes edited at ``hook_name`` can resume, or None (whole passes)."""
    from transformer_lens import HookedTransformer

    match = _BLOCK_HOOK.fullmatch(hook_name)
    if not isinstance(model, HookedTransformer) or match is None:
        return None
    layer, name = int(match[1]), match[2]
    if layer >= model.cfg.n_layers or hook_name not in model.hook_dict:
        return None
    if name == "hook_resid_post":
        return ResumePoint(layer + 1, hook_name, True)
    if name == "hook_resid_pre":
        return ResumePoint(layer, hook_name, True)
    return ResumePoint(layer, f"blocks.{layer}.hook_resid_pre", False)


class ChunkPasses:
    """The clean pass of one chunk, and passes edited at one hook after it."""

    def __init__(self, model, hook_name: str, resume: ResumePoint | None, chunk):
        self.model, self.hook_name, self.resume = model, hook_name, resume
        self.chunk = chunk
        if resume is None:
            logits, self.loss = model(chunk, return_type="both", loss_per_token=True)
        else:
            logits, self.loss = self._clean_resumable(chunk)
        self.log_clean = logits.float().log_softmax(-1)
        self.p_clean = self.log_clean.exp()

    def _clean_resumable(self, chunk):
        """The clean pass from the embedding, keeping where edited passes resume."""
        model, resume = self.model, self.resume
        residual, tokens, shortformer, attention_mask = model.input_to_embed(chunk)
        self.inputs = dict(
            tokens=tokens,
            shortformer_pos_embed=shortformer,
            attention_mask=attention_mask,
            return_type="both",
            loss_per_token=True,
        )
        kept = {}

        def keep(acts, hook):
            kept["acts"] = acts

        outputs = model.run_with_hooks(
            residual,
            start_at_layer=0,
            fwd_hooks=[(resume.capture, keep)],
            **self.inputs,
        )
        self.captured = kept["acts"]
        return outputs

    def kl_sum(self, logits: torch.Tensor) -> float:
        """Sum over positions of ``KL(clean || logits)`` of the next-token laws."""
        log_new = logits.float().log_softmax(-1)
        return (self.p_clean * (self.log_clean - log_new)).sum(-1).sum().item()

    def edited(self, edit: Callable[[torch.Tensor], torch.Tensor]):
        """``(logits, loss per token)`` with ``edit`` applied at the hook."""

        def hook(acts, hook):
            return edit(acts)

        if self.resume is None:
            return self.model.run_with_hooks(
                self.chunk,
                return_type="both",
                loss_per_token=True,
                fwd_hooks=[(self.hook_name, hook)],
            )
        if self.resume.edits_capture:
            start, hooks = edit(self.captured), []
        else:
            start, hooks = self.captured, [(self.hook_name, hook)]
        return self.model.run_with_hooks(
            start, start_at_layer=self.resume.layer, fwd_hooks=hooks, **self.inputs
        )


def downstream_metrics(
    model, sae, hook_name: str, tokens: torch.Tensor, mask: torch.Tensor | None = None
) -> dict:
    """CE loss and KL divergence with the SAE spliced in and zero-ablated.

    The SAE's reconstruction (or zero) replaces the hook activations at the
    positions in ``mask`` ``[n_seq, context]`` (all when None).  CE losses
    are means over predicted tokens; ``kl_div_with_*`` is the mean over
    positions of ``KL(clean || patched)`` of the next-token distributions;
    ``*_score`` is ``(ablated - sae) / (ablated - clean)`` (``kl_div_score``
    with clean KL 0).  Logits are computed ``LOGIT_CHUNK`` sequences at a
    time.
    """
    return downstream_metrics_many(model, [sae], hook_name, tokens, mask)[0]


def downstream_metrics_many(
    model,
    saes: Sequence,
    hook_name: str,
    tokens: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> list[dict]:
    """:func:`downstream_metrics` of each SAE at ``hook_name``, in order.

    The clean and zero-ablated passes are shared by all the SAEs.
    """
    if mask is None:
        mask = torch.ones(tokens.shape, dtype=torch.bool)
    resume = resume_point(model, hook_name)
    shared = dict.fromkeys(("clean", "zeroed", "kl_zero"), 0.0)
    spliced = [dict.fromkeys(("spliced", "kl_sae"), 0.0) for _ in saes]
    n_loss = n_kl = 0
    with torch.no_grad():
        for chunk, chunk_mask in zip(
            tokens.split(LOGIT_CHUNK), mask.split(LOGIT_CHUNK), strict=True
        ):
            passes = ChunkPasses(model, hook_name, resume, chunk)
            logits, loss = passes.edited(
                lambda acts, m=chunk_mask: at_positions(acts, torch.zeros_like(acts), m)
            )
            shared["zeroed"] += loss.sum().item()
            shared["kl_zero"] += passes.kl_sum(logits)
            for sae, sums in zip(saes, spliced, strict=True):
                logits, loss = passes.edited(
                    lambda acts, s=sae, m=chunk_mask: at_positions(
                        acts, splice(s, acts, s), m
                    )
                )
                sums["spliced"] += loss.sum().item()
                sums["kl_sae"] += passes.kl_sum(logits)
            shared["clean"] += passes.loss.sum().item()
            n_loss += passes.loss.numel()
            n_kl += chunk.numel()
    return [
        summarise(shared, sums, n_loss, n_kl, int(tokens.numel())) for sums in spliced
    ]


def summarise(shared: dict, sums: dict, n_loss: int, n_kl: int, n_tokens: int):
    """The metrics of one SAE from the summed losses and KL divergences."""
    clean, zeroed = shared["clean"] / n_loss, shared["zeroed"] / n_loss
    spliced = sums["spliced"] / n_loss
    kl_sae, kl_zero = sums["kl_sae"] / n_kl, shared["kl_zero"] / n_kl
    return {
        "ce_loss_clean": clean,
        "ce_loss_spliced": spliced,
        "ce_loss_zero_ablated": zeroed,
        "ce_loss_recovered": (zeroed - spliced) / (zeroed - clean)
        if zeroed != clean
        else float("nan"),
        "kl_div_with_sae": kl_sae,
        "kl_div_with_ablation": kl_zero,
        "kl_div_score": (kl_zero - kl_sae) / kl_zero if kl_zero else float("nan"),
        "ce_tokens": n_tokens,
    }
