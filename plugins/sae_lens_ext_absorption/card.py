"""The model-card section of the absorption analysis."""

from __future__ import annotations

N_CARD_SUSPECTS = 5


def card_text(report) -> str:
    """Markdown: headline numbers, top suspects with examples, first letters."""
    metrics = report.discrepancy.metrics(report.config.flag_threshold)
    lines = [
        "Encoder-vs-decoder discrepancy (Pearce): for each latent, the "
        f"top {report.config.top_n} inputs by encoder activation are compared with "
        "the top inputs by projection on its unit decoder direction; on the "
        "decoder's inputs, the share of that projection carried by other, "
        "aligned latents is the latent's absorption score (SAEBench's "
        "absorption fraction with the decoder direction as the probe).",
        "",
        f"- alive latents: {metrics['alive_latents']} of "
        f"{len(report.discrepancy.latents)}, over {metrics['n_rows']} tokens; "
        f"{metrics['rare_latents']} fired fewer than {report.config.top_n} times and "
        "are left out of the numbers below",
        f"- mean overlap: **{metrics['mean_overlap']:.2f}**; latents with "
        f"overlap < 0.5: {metrics['low_overlap_fraction']:.1%}",
        f"- mean absorption score: **{metrics['mean_absorption_score']:.3f}**; "
        f"suspected absorbed latents (score >= {report.config.flag_threshold}): "
        f"**{metrics['suspected_latents']}**",
    ]
    suspects = report.discrepancy.suspects.head(N_CARD_SUSPECTS)
    if len(suspects):
        lines += [
            "",
            "| rank | latent | score | overlap | absorbers (decoder cos) | absorbed example |",
            "|---|---|---|---|---|---|",
        ]
        for row in suspects.itertuples():
            absorbers = ", ".join(
                f"{a} ({c:.2f})"
                for a, c in zip(row.absorbers, row.absorber_cos, strict=True)
            )
            example = _cell(row.absorbed_examples.split(" | ")[0])
            lines.append(
                f"| {row.rank} | {row.latent} | {row.absorption_score:.2f} | "
                f"{row.overlap:.2f} | {absorbers} | {example} |"
            )
    lines += ["", _letters_section(report)]
    lines += [
        "",
        "References: Chanin et al. 2024, *A is for Absorption*; Chanin, Bloom "
        "et al. 2024, *Toy models of feature absorption in SAEs*; SAEBench's "
        "absorption metric; the encoder-vs-decoder comparison proposed by "
        "Michael Pearce.",
    ]
    return "\n".join(lines)


def _labelling_text(report) -> str:
    labelling = report.labelling
    if not labelling:
        return ""
    return (
        f"{labelling['labelled_fraction']:.1%} of the {labelling['rows_seen']} rows "
        "were labelled (alphabetic pieces that start a word; tokenizer convention: "
        f"{labelling['convention']}; {labelling['fragment_fraction']:.1%} were "
        "alphabetic fragments inside a word, left out). "
    )


def _letters_section(report) -> str:
    if report.first_letter is None:
        return _labelling_text(report) + report.letters_note
    metrics = report.first_letter.metrics
    text = (
        "First-letter absorption (Chanin et al., SAEBench protocol on the "
        "run's own tokens): "
        + _labelling_text(report)
        + f"{metrics['letters_probed']} letters probed, mean ground-truth probe F1 "
        f"{metrics['mean_probe_f1']:.2f}; "
    )
    if metrics["letters_evaluated"]:
        text += (
            f"over the {metrics['letters_evaluated']} letters with probe F1 >= "
            f"{report.config.min_probe_f1}: mean absorption rate "
            f"**{metrics['mean_absorption_rate']:.3f}**, mean absorption fraction "
            f"**{metrics['mean_absorption_fraction']:.3f}**, "
            f"{metrics['mean_main_latents']:.1f} main latents per letter."
        )
    text = text.rstrip("; ").rstrip(".") + "."
    return text + (" " + report.letters_note if report.letters_note else "")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
