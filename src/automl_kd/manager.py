"""Building the plugin manager: hookspecs, built-in plugin modules, entry points, blocking, validation.

``get_plugin_manager()`` builds a fresh manager every call (no import-time global), so tests get their own.
Built-in plugins are the modules listed in :data:`BUILTIN_PLUGINS`, registered with the same call a third-party
plugin goes through; third-party plugins come from the entry-point group ``automl_kd``. A plugin that fails to
import, fails validation or raises inside a hook is recorded in :attr:`PluginManager.errors` with its name and
distribution, and every other plugin still works.

Hooks are called through pluggy's own hook callers, one plugin at a time (:meth:`PluginManager.call_each`), so
hook wrappers (``@hookimpl(wrapper=True)``) and ``pm.trace`` apply while one plugin's failure stays its own.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.metadata
import logging
import os
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError
from .registry import Registry
from .trial_attrs import metrics_of

log = logging.getLogger("automl_kd")

ENTRY_POINT_GROUP = "automl_kd"
DISABLE_ENV = "AUTOML_KD_DISABLE_PLUGINS"
#: the built-in plugins, one module each; a new built-in plugin module is added here
BUILTIN_PLUGINS: tuple[str, ...] = (
    "automl_kd.plugins.augmenters.attention",
    "automl_kd.plugins.augmenters.dkd",
    "automl_kd.plugins.augmenters.ig_overlay",
    "automl_kd.plugins.augmenters.kd",
    "automl_kd.plugins.evaluators.proxy",
    "automl_kd.plugins.evaluators.synthetic",
    "automl_kd.plugins.evaluators.train",
    "automl_kd.plugins.proposers.evolution",
    "automl_kd.plugins.proposers.largest",
    "automl_kd.plugins.proposers.llm",
    "automl_kd.plugins.proposers.llm_evolution",
    "automl_kd.plugins.proposers.optuna_samplers",
    "automl_kd.plugins.proposers.random",
    "automl_kd.plugins.proposers.screen",
    "automl_kd.plugins.spaces.genius_imagenet",
    "automl_kd.plugins.spaces.mbv2",
    "automl_kd.plugins.spaces.paper_truncated",
)


@dataclass(frozen=True)
class PluginInfo:
    """A registered plugin: its name, where it came from and what it provides."""

    name: str
    distribution: str | None  # None for built-ins
    version: str | None
    hooks: tuple[str, ...]


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be used, and why."""

    name: str
    distribution: str | None
    error: str

    def message(self) -> str:
        dist = f" (distribution {self.distribution})" if self.distribution else ""
        return f"plugin {self.name!r}{dist} failed: {self.error}"


def disabled_from_env() -> set[str]:
    raw = os.environ.get(DISABLE_ENV, "")
    return {p.strip() for p in raw.split(",") if p.strip()}


def _hashable(plugin: Any, name: str) -> Any:
    """``plugin``, or for an unhashable object (a ``SimpleNamespace``) a module holding its attributes: pluggy's
    per-plugin hook callers keep plugins in sets."""
    try:
        hash(plugin)
        return plugin
    except TypeError:
        module = types.ModuleType(name)
        module.__dict__.update({a: getattr(plugin, a) for a in dir(plugin) if not a.startswith("__")})
        return module


class _Attributed:
    """The ``register`` callback handed to a ``register_*`` hook: the registry, told which plugin is calling."""

    def __init__(self, registry: Registry[Any], manager: PluginManager) -> None:
        self.registry, self.manager = registry, manager

    def __call__(self, name: str, factory: Callable[..., Any], *, description: str = "") -> None:
        self.registry._set_current_plugin(self.manager._current)
        self.registry(name, factory, description=description)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.registry, attr)


class PluginManager:
    """A typed wrapper over :class:`pluggy.PluginManager`; the rest of the code never touches ``pm.hook``.

    Attributes ``spaces``, ``proposers``, ``evaluators``, ``augmenters`` and ``benchmarks`` are the registries
    filled by the ``register_*`` hooks.
    """

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self.errors: list[PluginFailure] = []
        self.infos: dict[str, PluginInfo] = {}
        self.spaces: Registry[Any] = Registry("search space")
        self.proposers: Registry[Any] = Registry("proposer")
        self.evaluators: Registry[Any] = Registry("evaluator")
        self.augmenters: Registry[Any] = Registry("augmenter")
        self.benchmarks: Registry[Any] = Registry("benchmark")
        self._dists: dict[str, str | None] = {}
        self._current = "<unknown>"  # the plugin whose hook runs now (register_* attribute names to it)
        #: plugins that exist but are blocked (--disable-plugin, AUTOML_KD_DISABLE_PLUGINS): name -> distribution
        self.disabled: dict[str, str | None] = {}
        self._disabled_loaders: dict[str, Callable[[], Any]] = {}
        self._disabled_names: dict[str, dict[str, list[str]]] = {}
        for registry in self.registries().values():
            registry.explain_unknown = self.explain_unknown

    def registries(self) -> dict[str, Registry[Any]]:
        return {
            r.kind: r
            for r in (self.spaces, self.proposers, self.evaluators, self.augmenters, self.benchmarks)
        }

    # -- loading ---------------------------------------------------------------------------------------------
    def add_disabled(self, name: str, distribution: str | None, load: Callable[[], Any]) -> None:
        """Remember a blocked plugin, so that a name it registers is reported as disabled, not as unknown."""
        self.disabled[name] = distribution
        self._disabled_loaders[name] = load

    def _names_of_disabled(self, plugin: str) -> dict[str, list[str]]:
        """What a disabled plugin would register, by kind: loaded into a manager of its own, only to say so in
        an error message (a plugin that fails to load there registers nothing)."""
        if plugin not in self._disabled_names:
            probe = PluginManager(pluggy.PluginManager(hookspecs.PROJECT))
            probe.pm.add_hookspecs(hookspecs)
            try:
                if probe.add(self._disabled_loaders[plugin](), plugin):
                    probe.collect()
            except Exception:  # a broken disabled plugin: its own name is all we know
                pass
            self._disabled_names[plugin] = {k: r.names() for k, r in probe.registries().items()}
        return self._disabled_names[plugin]

    def explain_unknown(self, kind: str, name: str) -> str | None:
        """Why ``name`` is not a registered ``kind`` when a disabled plugin provides it (or is called so)."""
        for plugin, dist in self.disabled.items():
            short = plugin.rsplit(".", 1)[-1].replace("_", "-")
            if name in self._names_of_disabled(plugin).get(kind, []) or name in (plugin, short):
                source = f"distribution {dist}" if dist else "built in"
                return (
                    f"{kind} {name!r} comes from plugin {plugin!r} ({source}), which is disabled "
                    f"(--disable-plugin or {DISABLE_ENV}); enable it to use {name!r}"
                )
        return None

    def add(
        self, plugin: Any, name: str, distribution: str | None = None, version: str | None = None
    ) -> bool:
        """Register one plugin object; on failure record it in :attr:`errors` and return False."""
        if self.pm.is_blocked(name):
            return False
        plugin = _hashable(plugin, name)
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:  # a bad hookimpl signature, a misspelt hook marker, ...
            self.errors.append(PluginFailure(name, distribution, f"{type(exc).__name__}: {exc}"))
            return False
        hooks = tuple(sorted(c.name for c in self.pm.get_hookcallers(plugin) or []))
        self.infos[name] = PluginInfo(name, distribution, version, hooks)
        self._dists[name] = distribution
        return True

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        """Import and register every entry point of ``group``; a broken one is recorded, not fatal."""
        seen: set[str] = set()
        for dist in importlib.metadata.distributions():
            for ep in dist.entry_points:
                if ep.group != group or ep.name in seen:
                    continue
                seen.add(ep.name)
                dist_name = dist.metadata["Name"]
                if self.pm.is_blocked(ep.name):
                    self.add_disabled(ep.name, dist_name, ep.load)
                    continue
                try:
                    plugin = ep.load()
                except Exception as exc:
                    self.errors.append(
                        PluginFailure(ep.name, dist_name, f"import failed: {type(exc).__name__}: {exc}")
                    )
                    continue
                self.add(plugin, ep.name, dist_name, dist.version)

    def check_pending(self) -> None:
        """Hook implementations that match no hookspec (a misspelt name) make their plugin fail."""
        for name, plugin in list(self.pm.list_name_plugin()):
            try:
                for hook_name in dir(plugin):
                    if self.pm.parse_hookimpl_opts(plugin, hook_name) is None:
                        continue
                    hc = getattr(self.pm.hook, hook_name, None)
                    if hc is None or not hc.has_spec():
                        raise pluggy.PluginValidationError(
                            plugin,
                            f"unknown hook {hook_name!r} (a misspelling of one of the automl_kd hooks?)",
                        )
            except pluggy.PluginValidationError as exc:
                self.errors.append(PluginFailure(name, self._dists.get(name), str(exc)))
                self.pm.unregister(name=name)
                self.infos.pop(name, None)

    def call_each(self, hook_name: str, on_error: Callable[[str, Exception], None], **kwargs: Any) -> None:
        """Call hook ``hook_name`` once per implementing plugin, in registration order, through pluggy's hook
        callers (so wrappers and tracing apply); an exception is handed to ``on_error(plugin_name, exc)``."""
        impls = getattr(self.pm.hook, hook_name).get_hookimpls()
        wrappers = [i for i in impls if i.wrapper or i.hookwrapper]
        plain = [i for i in impls if not (i.wrapper or i.hookwrapper)]
        keep = {id(i.plugin) for i in wrappers}
        # get_hookimpls() is in registration order (pluggy *calls* them last-first): built-ins come first
        for impl in plain:
            others = [i.plugin for i in plain if i is not impl and id(i.plugin) not in keep]
            caller = self.pm.subset_hook_caller(hook_name, remove_plugins=others)
            self._current = impl.plugin_name
            try:
                caller(**kwargs)
            except Exception as exc:
                on_error(impl.plugin_name, exc)

    def collect(self) -> None:
        """Call every ``register_*`` hook, one plugin at a time, so one failure doesn't hide the others."""
        for hook_name, registry in (
            ("register_search_spaces", self.spaces),
            ("register_proposers", self.proposers),
            ("register_evaluators", self.evaluators),
            ("register_augmenters", self.augmenters),
            ("register_benchmarks", self.benchmarks),
        ):
            # built-ins register first, so a third-party plugin cannot take over a built-in name: it gets a
            # duplicate-name error
            self.call_each(hook_name, self._failed(hook_name), register=_Attributed(registry, self))

    def _failed(self, hook_name: str) -> Callable[[str, Exception], None]:
        def record(plugin: str, exc: Exception) -> None:
            self.errors.append(
                PluginFailure(
                    plugin, self._dists.get(plugin), f"{hook_name} raised {type(exc).__name__}: {exc}"
                )
            )

        return record

    # -- typed hook calls ------------------------------------------------------------------------------------
    def register_commands(self, subparsers: argparse._SubParsersAction) -> None:
        """Let plugins add ``automl-kd`` subcommands; a failing plugin (a name already taken) is recorded."""

        def record(plugin: str, exc: Exception) -> None:
            failure = PluginFailure(
                plugin, self._dists.get(plugin), f"register_commands raised {type(exc).__name__}: {exc}"
            )
            self.errors.append(failure)
            log.warning("%s", failure.message())

        self.call_each("register_commands", record, cli=subparsers)

    def on_trial_end(
        self,
        study_name: str,
        trial_number: int,
        state: str,
        values: list[float] | None,
        attrs: dict[str, Any],
    ) -> None:
        def warn(plugin: str, exc: Exception) -> None:
            log.warning("plugin %r: on_trial_end raised %s: %s", plugin, type(exc).__name__, exc)

        self.call_each(
            "on_trial_end",
            warn,
            study_name=study_name,
            trial_number=trial_number,
            state=state,
            values=values,
            # the metrics' names (``params``), whatever name storage keeps them under
            attrs=metrics_of(attrs),
        )

    def raise_errors(self) -> None:
        """Raise a :class:`PluginError` listing every failed plugin (for strict callers)."""
        if self.errors:
            raise PluginError("; ".join(f.message() for f in self.errors))

    def distribution_of(self, plugin_name: str) -> str | None:
        return self._dists.get(plugin_name)


def get_plugin_manager(
    disable: Iterable[str] = (),
    *,
    entry_points: bool = True,
    extra_plugins: Iterable[tuple[str, Any]] = (),
) -> PluginManager:
    """Build a fresh plugin manager.

    ``disable`` (plus the comma-separated ``AUTOML_KD_DISABLE_PLUGINS``) blocks plugins by name: an entry-point
    name for third-party plugins, the module name (``automl_kd.plugins.proposers.llm``) for built-ins.
    ``extra_plugins`` registers ``(name, object)`` pairs, for tests and for programmatic use.

    Example::

        pm = get_plugin_manager()
        print(pm.spaces.names(), [f.message() for f in pm.errors])
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    blocked = {*disable, *disabled_from_env()}
    for name in blocked:
        pm.set_blocked(name)
    manager = PluginManager(pm)
    for modname in BUILTIN_PLUGINS:
        if pm.is_blocked(modname):
            manager.add_disabled(modname, None, functools.partial(importlib.import_module, modname))
            continue
        try:
            module = importlib.import_module(modname)
        except Exception as exc:
            manager.errors.append(PluginFailure(modname, None, f"import failed: {type(exc).__name__}: {exc}"))
            continue
        manager.add(module, modname)
    if entry_points:
        manager.load_entry_points()
    extra = list(extra_plugins)
    for name, plugin in extra:
        manager.add(plugin, name)
    manager.check_pending()
    manager.collect()
    for failure in manager.errors:
        log.warning("%s", failure.message())
    if entry_points:  # a name that blocks nothing is most likely a built-in's short name
        for name in sorted(blocked - set(manager.disabled) - {n for n, _ in extra}):
            like = [m for m in BUILTIN_PLUGINS if m.rsplit(".", 1)[-1] == name.replace("-", "_")]
            hint = f"; built-ins are named by module: {like[0]}" if like else ""
            log.warning("--disable-plugin %r matches no plugin (see automl-kd plugins)%s", name, hint)
    return manager
