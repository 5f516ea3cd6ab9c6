"""Named presets: config overrides that run the analyses at someone else's settings.

``--preset saebench`` (or ``run(config=preset_config("saebench", ...))``)
runs the analyses at SAEBench's settings so their numbers compare with
SAEBench's number for number.  Options given explicitly win over the preset.
Each overridden setting carries the reason it differs from our default;
``docs/saebench.md`` lists them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass


@dataclass(frozen=True)
class PresetSetting:
    """One override: the value, and why it differs from our default."""

    value: object
    reason: str


SAEBENCH = {
    "meta_sae": {
        "width_ratio": PresetSetting(
            0.25,
            "SAEBench's meta_structure eval: ceil(0.25 x d_sae) meta-latents "
            "(ours: the meta-SAE paper's 2304/49152 of the latents used)",
        ),
        "k": PresetSetting(4.0, "SAEBench's BatchTopK k (the same as ours)"),
        "steps": PresetSetting(
            1500, "SAEBench's train_steps (ours: 2000, converged on the demo)"
        ),
        "batch_size": PresetSetting(
            1024, "SAEBench's train_batch_size of decoder rows (ours: 4096)"
        ),
        "lr": PresetSetting(5e-4, "SAEBench's Adam learning rate (ours: 1e-3)"),
        "lr_decay_fraction": PresetSetting(
            0.0, "SAEBench keeps the learning rate constant (ours decays the last 20%)"
        ),
        "resample_every": PresetSetting(
            0,
            "SAEBench resamples no dead meta-latents (its dead-feature window, "
            "2000 steps, is longer than its 1500-step run)",
        ),
        "sampling": PresetSetting(
            "replacement",
            "SAEBench draws each batch of decoder rows uniformly with "
            "replacement (ours: a shuffle per epoch; when the batch holds the "
            "whole decoder, that is full-batch training with no gradient noise, "
            "the main cause of a +5% higher variance explained)",
        ),
        "decoder_norm": PresetSetting(
            "rescaled",
            "SAE-Lens's BatchTopKTrainingSAE with rescale_acts_by_decoder_norm: "
            "free decoder-row norms, activations scaled by them (ours: rows kept "
            "at unit norm; the same function, different Adam steps)",
        ),
        "decoder_init_norm": PresetSetting(
            0.1, "SAE-Lens's decoder_init_norm (ours: unit rows)"
        ),
        "b_dec_init": PresetSetting(
            "zero", "SAE-Lens starts b_dec at zero (ours: the mean decoder row)"
        ),
        "grad_clip": PresetSetting(
            1.0,
            "SAE-Lens's trainer clips the total gradient norm to 1 (ours: no "
            "clipping; Adam is already scale-free)",
        ),
        "skip_dead": PresetSetting(
            False,
            "SAEBench decomposes every decoder row, dead latents included "
            "(ours leaves out latents that never fired: their rows are untrained)",
        ),
    },
    "absorption": {
        "max_k": PresetSetting(10, "SAEBench's max_k_value (the same as ours)"),
        "f1_jump": PresetSetting(
            0.03, "SAEBench's f1_jump_threshold (the same as ours)"
        ),
        "min_probe_f1": PresetSetting(
            0.6, "SAEBench's min_GT_probe_f1 (the same as ours)"
        ),
        "share_threshold": PresetSetting(
            0.4, "SAEBench's absorption share threshold (the same as ours)"
        ),
        "probe_training": PresetSetting(
            "saebench",
            "SAEBench trains its probes with a fixed budget of Adam epochs "
            "(ground truth: 50 epochs of 64 rows; latent ranking: 50 epochs of "
            "4096 rows under L1 decay 0.01) and fits its k-sparse probes with "
            "scikit-learn (C=1); ours solves each probe to its optimum. On a "
            "small vocabulary its ranking probe takes few steps, and its main "
            "latents and probe directions, and so its absorption, differ",
        ),
        "subtract_b_dec": PresetSetting(
            False,
            "SAEBench projects the raw SAE input on the probe; ours subtracts "
            "b_dec first, so a decoder bias along the probe is not counted as "
            "signal no latent carries",
        ),
    },
    "mdl": {
        "finest_precision": PresetSetting(
            100 / 64,
            "SAEBench bins each latent's range [0, max(100, max activation)] "
            "into 8/16/32/64 bins: widths 100/64 .. 100/8 for SAEs whose "
            "activations stay under 100 (ours: a 2**-7 .. 4 ladder)",
        ),
        "n_precisions": PresetSetting(
            4, "SAEBench's four bin counts 64, 32, 16, 8 (ours: ten widths)"
        ),
    },
}

PRESETS: dict[str, dict[str, dict[str, PresetSetting]]] = {"saebench": SAEBENCH}


def preset_names() -> list[str]:
    """Names of the known presets."""
    return sorted(PRESETS)


def preset_overrides(name: str) -> dict[str, dict[str, object]]:
    """``analysis -> {field: value}`` of a preset; ValueError for unknown names."""
    if name not in PRESETS:
        raise ValueError(
            f"Unknown preset {name!r}; choose one of {', '.join(preset_names())} "
            "(--preset)."
        )
    return {
        analysis: {key: setting.value for key, setting in fields.items()}
        for analysis, fields in PRESETS[name].items()
    }


def preset_config(name: str | None, config: dict | None = None, plugins=None) -> dict:
    """``config`` on top of the preset's overrides (explicit options win).

    ``plugins`` is the run's plugin selection (as for ``run``): the preset's
    entries for analyses that will not run are dropped, so a preset never
    names a disabled analysis.
    """
    merged = {} if name is None else preset_overrides(name)
    if merged:
        enabled = enabled_analyses(plugins)
        merged = {k: v for k, v in merged.items() if k in enabled}
    for analysis, fields in (config or {}).items():
        merged.setdefault(analysis, {}).update(copy.deepcopy(fields))
    return merged


def enabled_analyses(plugins) -> set[str]:
    """Names of the analyses a plugin selection runs."""
    from .plugins import get_registry, resolve_enabled

    registry = get_registry()
    chosen = set(resolve_enabled(plugins, registry.plugin_names()))
    return {
        name for name, (plugin, _) in registry.analyses().items() if plugin in chosen
    }


def matching_preset(config: dict) -> str | None:
    """The preset whose every setting the run's configs hold, or None.

    ``config`` is ``summary.json``'s ``config`` (analysis -> field values);
    settings of analyses that did not run are not checked.
    """
    for name in preset_names():
        overrides = preset_overrides(name)
        ran = [a for a in overrides if a in config]
        if ran and all(
            config[a].get(key) == value
            for a in ran
            for key, value in overrides[a].items()
        ):
            return name
    return None
