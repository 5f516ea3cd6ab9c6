"""The plugin manager: discovery through entry points, enablement, registries.

Every plugin, built-in or third-party, is found through the ``sae_lens_ext``
entry-point group; the host never imports a plugin by name.  The host's own
hook implementations (the base analysis and the demo release) are registered
directly, the way datasette and llm register their default plugins.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import os
from dataclasses import dataclass, field

import pluggy

from . import hookspecs
from .analysis import Analysis
from .releases import Release

ENTRY_POINT_GROUP = "sae_lens_ext"
ENV_ENABLED = "SAE_LENS_EXT_PLUGINS"
HOST_PLUGIN = "base"
DEFAULT_PLUGINS = ("sae_lens_ext.default_plugins",)
MAX_LISTED = 20  # longer lists of known names are summarised by their count


@dataclass
class PluginInfo:
    """One loaded (or failed) plugin, as ``sae-lens-ext plugins`` shows it."""

    name: str
    version: str | None
    distribution: str | None
    hooks: list[str]
    analyses: list[str] = field(default_factory=list)
    error: str | None = None
    problems: list[str] = field(default_factory=list)


class PluginRegistry:
    """The loaded plugins and what they registered."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.failed: dict[str, tuple[importlib.metadata.EntryPoint, str]] = {}
        self._entry_points: dict[str, importlib.metadata.EntryPoint] = {}
        self._analyses: dict[str, tuple[str, type[Analysis]]] | None = None
        self._releases: dict[str, Release] | None = None
        self._architectures_done = False
        self.problems: dict[str, list[str]] = {}

    def load(self) -> PluginRegistry:
        """Register the host's defaults and every entry-point plugin."""
        import importlib

        for module_name in DEFAULT_PLUGINS:
            module = importlib.import_module(module_name)
            self.pm.register(module, name=HOST_PLUGIN)
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if self.pm.get_plugin(ep.name) is not None or ep.name in self.failed:
                continue
            self._entry_points[ep.name] = ep
            try:
                plugin = ep.load()
                self._register_checked(plugin, ep.name)
            except Exception as exc:  # a broken plugin must not break the host
                self.failed[ep.name] = (ep, f"{type(exc).__name__}: {exc}")
        return self

    def _register_checked(self, plugin: object, name: str) -> None:
        """Register a plugin; unregister it again if a hookimpl matches no hook."""
        self.pm.register(plugin, name=name)
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(plugin, name=name)
            hooks = [n for n in dir(hookspecs) if n.startswith(("register_", "model_"))]
            raise pluggy.PluginValidationError(
                exc.plugin, f"{exc} (known hooks: {', '.join(sorted(hooks))})"
            ) from None

    def register(self, plugin: object, name: str) -> None:
        """Register a plugin object directly (tests, notebooks).

        A hookimpl that matches no hook raises ``pluggy.PluginValidationError``.
        """
        self._register_checked(plugin, name)
        self._analyses = self._releases = None
        self._architectures_done = False

    @property
    def hook(self):
        """The pluggy hook relay."""
        return self.pm.hook

    def plugin_names(self) -> list[str]:
        """Names of loaded plugins, the host's defaults excluded."""
        return sorted(n for n, _ in self.pm.list_name_plugin() if n != HOST_PLUGIN)

    def analyses(self) -> dict[str, tuple[str, type[Analysis]]]:
        """Map analysis name -> (plugin name, analysis class)."""
        if self._analyses is None:
            self.problems = {}
            found: dict[str, tuple[str, type[Analysis]]] = {}
            for impl in self.pm.hook.register_analyses.get_hookimpls():
                plugin_name = self.pm.get_name(impl.plugin)

                def register(cls, _plugin=plugin_name):
                    if not (isinstance(cls, type) and issubclass(cls, Analysis)):
                        raise TypeError(
                            f"registered {cls!r}, which is not a "
                            "sae_lens_ext.Analysis subclass"
                        )
                    cls.validate()
                    if cls.name in found and found[cls.name][1] is not cls:
                        self._problem(
                            _plugin,
                            f"analysis {cls.name!r} was not registered: plugin "
                            f"{found[cls.name][0]!r} already registers an analysis "
                            "of that name (rename one of them)",
                        )
                        return
                    found[cls.name] = (_plugin, cls)

                try:
                    impl.function(register=register)
                except Exception as exc:  # one plugin's bad class must not break all
                    self._problem(
                        plugin_name,
                        f"register_analyses failed ({type(exc).__name__}: {exc})",
                    )
            self._analyses = found
        return self._analyses

    def _problem(self, plugin_name: str, message: str) -> None:
        problems = self.problems.setdefault(plugin_name, [])
        if message not in problems:
            problems.append(message)

    def load_errors(self) -> dict[str, str]:
        """Map plugin name -> why it failed to load."""
        return {name: error for name, (_, error) in self.failed.items()}

    def warnings(self) -> list[str]:
        """One line per plugin that failed to load or had a registration refused."""
        self.analyses()
        lines = [
            f"plugin {name!r} failed to load and is not available: {error}"
            for name, error in sorted(self.load_errors().items())
        ]
        for name, problems in sorted(self.problems.items()):
            lines += [f"plugin {name!r}: {problem}" for problem in problems]
        return lines

    def releases(self) -> dict[str, Release]:
        """Map release name -> Release, from ``register_releases``."""
        if self._releases is None:
            found: dict[str, Release] = {}

            def register(release: Release) -> None:
                found[release.name] = release

            self.pm.hook.register_releases(register=register)
            self._releases = found
        return self._releases

    def register_architectures(self) -> list[str]:
        """Put every contributed SAE architecture into SAE-Lens's registry."""
        from sae_lens.registry import (
            SAE_CLASS_REGISTRY,
            SAE_TRAINING_CLASS_REGISTRY,
            register_sae_class,
            register_sae_training_class,
        )

        names: list[str] = []

        def register(
            architecture,
            sae_class,
            config_class,
            training_class=None,
            training_config_class=None,
        ):
            if architecture not in SAE_CLASS_REGISTRY:
                register_sae_class(architecture, sae_class, config_class)
            if training_class is not None and (
                architecture not in SAE_TRAINING_CLASS_REGISTRY
            ):
                register_sae_training_class(
                    architecture, training_class, training_config_class
                )
            names.append(architecture)

        if not self._architectures_done:
            self.pm.hook.register_sae_architectures(register=register)
            self._architectures_done = True
        return names

    def plugin_of(self, analysis_name: str) -> str:
        """The plugin that registered an analysis."""
        return self.analyses()[analysis_name][0]

    def info(self) -> list[PluginInfo]:
        """Describe every loaded or failed plugin."""
        by_plugin: dict[str, list[str]] = {}
        for analysis_name, (plugin_name, _) in self.analyses().items():
            by_plugin.setdefault(plugin_name, []).append(analysis_name)
        rows = []
        for name in self.plugin_names():
            plugin = self.pm.get_plugin(name)
            hooks = sorted(
                caller.name for caller in self.pm.get_hookcallers(plugin) or []
            )
            dist = _distribution(self._entry_points.get(name))
            rows.append(
                PluginInfo(
                    name=name,
                    version=dist.version if dist else None,
                    distribution=dist.name if dist else None,
                    hooks=hooks,
                    analyses=sorted(by_plugin.get(name, [])),
                    problems=list(self.problems.get(name, [])),
                )
            )
        for name, (ep, error) in sorted(self.failed.items()):
            dist = _distribution(ep)
            rows.append(
                PluginInfo(
                    name=name,
                    version=dist.version if dist else None,
                    distribution=dist.name if dist else None,
                    hooks=[],
                    error=error,
                )
            )
        return rows


def _distribution(ep: importlib.metadata.EntryPoint | None):
    return getattr(ep, "dist", None) if ep is not None else None


_registry: PluginRegistry | None = None


def get_registry() -> PluginRegistry:
    """The process-wide plugin registry, loaded on first use."""
    global _registry
    if _registry is None:
        _registry = PluginRegistry().load()
        _registry.register_architectures()
    return _registry


def reset_registry() -> None:
    """Forget the loaded plugins so the next use rediscovers them (tests)."""
    global _registry
    _registry = None


def resolve_enabled(
    spec: str | list[str] | tuple[str, ...] | None,
    available: list[str],
    failed: dict[str, str] | None = None,
) -> list[str]:
    """Turn a plugin selection into the list of enabled plugin names.

    ``spec`` is a list or comma-separated string of names; ``no:NAME`` entries
    disable a plugin, plain names select an explicit set.  None falls back to
    the ``SAE_LENS_EXT_PLUGINS`` environment variable, then to all plugins.
    ``"all"`` selects every plugin.  ``failed`` maps plugins that failed to
    load to their error, so selecting one says why it is not available.
    """
    if spec is None:
        spec = os.environ.get(ENV_ENABLED) or "all"
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    items = [i.strip() for item in items for i in item.split(",") if i.strip()]
    chosen = [i for i in items if not i.startswith("no:") and i != "all"]
    blocked = [i[3:] for i in items if i.startswith("no:")]
    for name in chosen + blocked:
        if name in (failed or {}) and name in chosen:
            raise ValueError(
                f"plugin {name!r} is installed but failed to load: {failed[name]}. "
                f"Fix or reinstall it (see `sae-lens-ext plugins`), or leave it out "
                "of --plugins."
            )
        if name not in available and name != "base" and name not in (failed or {}):
            raise ValueError(unknown_name_message("plugin", name, available + ["base"]))
    enabled = chosen if chosen else ["base", *available]
    if chosen and "base" not in chosen and "no:base" not in items:
        enabled = ["base", *chosen]
    return [name for name in enabled if name not in blocked]


def unknown_name_message(kind: str, name: str, known: list[str]) -> str:
    """An error message for an unknown name, with the closest known names."""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    if len(known) > MAX_LISTED:
        return f"Unknown {kind} {name!r}.{hint} ({len(known):,} {kind}s are known.)"
    listing = ", ".join(sorted(known)) or "(none installed)"
    return f"Unknown {kind} {name!r}.{hint} Known {kind}s: {listing}."
