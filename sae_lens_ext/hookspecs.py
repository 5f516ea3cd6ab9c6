"""The hooks a sae-lens-ext plugin can implement.

A plugin is any module or object with functions decorated by :data:`hookimpl`,
exposed through the ``sae_lens_ext`` entry-point group::

    [project.entry-points.sae_lens_ext]
    my_plugin = "my_package.plugin"

Every ``register_*`` hook receives a ``register`` callable; call it once per
thing you contribute.  The host validates what you pass and reports errors
naming your plugin.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("sae_lens_ext")
hookimpl = pluggy.HookimplMarker("sae_lens_ext")


@hookspec
def register_analyses(register):
    """Contribute analyses to ``sae-lens-ext run``.

    Call ``register(analysis_class)`` with a subclass of
    :class:`sae_lens_ext.Analysis`.  The class names itself (``name``), its
    config dataclass (``config_class``) and what it needs from the run
    (``needs``: a subset of ``{"weights", "activations", "tokens", "model"}``).
    Analyses that need activations are fed from the host's one shared pass.
    """


@hookspec
def register_sae_architectures(register):
    """Contribute SAE architectures to SAE-Lens's registry.

    Call ``register(architecture, sae_class, config_class,
    training_class=None, training_config_class=None)``.  The host registers
    each into ``sae_lens.registry`` once (re-registration is a no-op), so
    ``SAE.load_from_disk`` and ``SAE.from_pretrained`` can build it.
    """


@hookspec
def register_releases(register):
    """Contribute named SAE releases that load without SAE-Lens's directory.

    Call ``register(release)`` with a :class:`sae_lens_ext.Release`: a name,
    a mapping of SAE ids to SAE-Lens-format folders, and optionally a model
    loader and a default dataset.  ``load_sae(release, sae_id)`` looks here
    before local folders and SAE-Lens's own directory.
    """


@hookspec
def model_card_sections(summary, run_dir):
    """Return Markdown to add to a run's ``README.md`` model card, or None.

    ``summary`` is the run's ``summary.json`` content as a dict and
    ``run_dir`` its :class:`pathlib.Path`.  Analyses already contribute their
    own section through their result; use this hook for cross-cutting notes.
    """


@hookspec
def register_commands(cli):
    """Add commands to the ``sae-lens-ext`` command line.

    ``cli`` is the root :class:`click.Group`; decorate new commands with
    ``@cli.command()``.
    """


@hookspec
def register_metric_directions(register):
    """Say, for each headline metric, whether higher or lower is better.

    Call ``register(analysis_name, {metric: direction})`` with a direction
    from :data:`sae_lens_ext.saebench.DIRECTIONS`: ``"higher"``,
    ``"lower"``, ``"closer_to_1"``, ``"closer_to_0"`` or ``"none"`` (a count or a setting, not
    a score).  ``summary.json``, the model card and the SAEBench-format
    JSON show the direction next to each metric.
    """


@hookspec
def register_saebench_evals(register):
    """Map an analysis's result to one of SAEBench's eval-output JSONs.

    Call ``register(analysis_name, build, warnings=None)``; after the
    analysis finishes the host calls ``build(result, run)`` with its
    :class:`AnalysisResult` and a :class:`sae_lens_ext.SAEBenchRun`, and
    writes the returned :class:`sae_lens_ext.SAEBenchEval` to
    ``<run>/saebench/<eval_type_id>.json``.  ``build`` raises
    :class:`sae_lens_ext.SAEBenchSkip` when SAEBench itself would not report
    the eval (the reason goes into ``summary.json``).  ``warnings(result,
    run)``, when given, returns the reasons the analysis's numbers may
    mislead on this run (an SAE or model outside the range where the metric
    is meaningful); they go into ``summary.json``, the card and the JSON.
    """
