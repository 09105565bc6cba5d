"""Plugin loading and the component registry.

Built-in components live in the repository's top-level ``plugins/`` folder, installed as the package
``harness.plugins`` (no top-level ``plugins`` is installed), and are loaded exactly like third-party ones:
each module implements hooks from ``harness.hookspecs``. Installed packages
contribute plugins through the ``retrieval_harness`` entry-point group::

    [project.entry-points.retrieval_harness]
    my_heads = "my_package.heads"

``HARNESS_LOAD_PLUGINS`` limits autoload: unset loads every entry point, an empty value loads
none, ``a,b`` loads only the entry points named ``a`` and ``b``. Built-ins always load.
"""
from __future__ import annotations

import difflib
import importlib
import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable

import pluggy

from harness import hookspecs

PROJECT = "retrieval_harness"  # the distribution's name: hook marker and entry-point group alike
ENTRY_POINT_GROUP = PROJECT
LOAD_ENV = "HARNESS_LOAD_PLUGINS"
KINDS = ("encoders", "datasets", "heads", "losses", "checks")
DEFAULT_PLUGINS = (
    "harness.plugins.encoders",
    "harness.plugins.datasets",
    "harness.plugins.heads.identity",
    "harness.plugins.heads.asymmetric",
    "harness.plugins.heads.respred",
    "harness.plugins.heads.isopred",
    "harness.plugins.heads.barlow",
    "harness.plugins.heads.adapter",
    "harness.plugins.losses",
    "harness.plugins.checks.finite",
    "harness.plugins.checks.bounded_norms",
    "harness.plugins.checks.nonzero_residuals",
    "harness.plugins.checks.no_degradation",
    "harness.plugins.checks.no_collapse",
    "harness.plugins.checks.beats_baseline",
    "harness.plugins.checks.similarity_consistency",
    "harness.plugins.checks.loss_properties",
    "harness.plugins.checks.rerank_depth",
    "harness.plugins.checks.changes_ranking",
    "harness.plugins.checks.no_regression",
    "harness.plugins.checks.generalizes",
    "harness.plugins.checks.reproducible",
)


class PluginError(Exception):
    """A plugin is broken or a component name is wrong; the message says which and what to do."""


class UnknownComponentError(PluginError):
    """A component name that no plugin registered: the user's typo (``error:``), not a broken plugin."""


@dataclass(frozen=True)
class Component:
    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str
    info: dict = field(default_factory=dict)

    @property
    def summary(self) -> str:
        doc = self.info.get("description") or (self.factory.__doc__ or "")
        return doc.strip().splitlines()[0] if doc.strip() else ""


class Registry:
    """Every component of every kind, with the plugin that registered it."""

    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm
        self._components: dict[str, dict[str, Component]] = {}

    def components(self, kind: str) -> dict[str, Component]:
        if kind not in KINDS:
            raise PluginError(f"unknown component kind {kind!r}; kinds are {', '.join(KINDS)}")
        if kind not in self._components:
            self._components[kind] = self._collect(kind)
        return self._components[kind]

    def get(self, kind: str, name: str) -> Component:
        found = self.components(kind)
        if name in found:
            return found[name]
        singular = kind[:-2] if kind.endswith("sses") else kind[:-1]  # losses -> loss
        close = difflib.get_close_matches(name, list(found), n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        known = ", ".join(sorted(found)) or "none"
        raise UnknownComponentError(
            f"unknown {singular} {name!r}.{hint} Registered {kind}: {known}. "
            f"Run `harness plugins` to see which plugin provides each."
        )

    def _collect(self, kind: str) -> dict[str, Component]:
        hook_name = f"register_{kind}"
        caller = getattr(self.pm.hook, hook_name)
        found: dict[str, Component] = {}
        # Oldest registration first, so a duplicate is reported against the plugin that came first.
        for impl in caller.get_hookimpls():
            plugin = impl.plugin_name

            def register(name: str, factory: Callable[..., Any], **info: Any) -> None:
                if not isinstance(name, str) or not name:
                    raise PluginError(f"plugin {plugin!r} registered a {kind[:-1]} with an empty or non-string name")
                if name in found:
                    raise PluginError(
                        f"{kind[:-1]} {name!r} is registered twice: by plugin {found[name].plugin!r} "
                        f"and by plugin {plugin!r}. Rename one of them, or limit autoload with "
                        f"{LOAD_ENV}=<comma-separated entry points>."
                    )
                found[name] = Component(kind, name, factory, plugin, info)

            try:
                impl.function(register=register)
            except PluginError:
                raise
            except Exception as exc:  # a plugin's own bug: say whose
                raise PluginError(
                    f"plugin {plugin!r} raised {type(exc).__name__} in hook {hook_name}: {exc}"
                ) from exc
        return found


def _selected_entry_points():
    eps = list(entry_points(group=ENTRY_POINT_GROUP))
    wanted = os.environ.get(LOAD_ENV)
    if wanted is None:
        return eps
    names = {n.strip() for n in wanted.split(",") if n.strip()}
    missing = names - {ep.name for ep in eps}
    if missing:
        raise PluginError(
            f"{LOAD_ENV} names entry points that are not installed: {', '.join(sorted(missing))}. "
            f"Installed in group {ENTRY_POINT_GROUP!r}: {', '.join(sorted(ep.name for ep in eps)) or 'none'}."
        )
    return [ep for ep in eps if ep.name in names]


def _register(pm: pluggy.PluginManager, module: Any, name: str, origin: str) -> None:
    try:
        pm.register(module, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {name!r} ({origin}) has an invalid hook implementation: {exc}") from exc
    except ValueError as exc:  # pluggy: the same name or object registered twice
        raise PluginError(f"plugin {name!r} ({origin}) cannot be registered: {exc}") from exc


def _check_pending(pm: pluggy.PluginManager) -> None:
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        hooks = [n for n in dir(hookspecs) if n.startswith("register_")]
        bad = [n for n in dir(exc.plugin) if n.startswith("register") and n not in hooks]
        guesses = [g for n in bad for g in difflib.get_close_matches(n, hooks, n=1)]
        hint = f" Did you mean {', '.join(guesses)}?" if guesses else ""
        raise PluginError(
            f"plugin {pm.get_name(exc.plugin)!r} implements a hook that does not exist: "
            f"{', '.join(bad) or exc}.{hint} Hooks are: {', '.join(hooks)}."
        ) from exc


def build_registry(extra_plugins: tuple[Any, ...] = ()) -> Registry:
    """A fresh plugin manager with built-ins, selected entry points and ``extra_plugins``."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    for module_name in DEFAULT_PLUGINS:
        _register(pm, _builtin(module_name), module_name, "built-in")
    selected = _selected_entry_points()
    for ep in selected:
        origin = f"entry point {ep.name!r} of {ep.dist.name if ep.dist else 'an unknown distribution'}"
        try:
            module = ep.load()
        except Exception as exc:
            others = ",".join(e.name for e in selected if e.name != ep.name)
            raise PluginError(f"could not load plugin {ep.name!r} ({origin}, {ep.value}): {type(exc).__name__}: {exc}"
                              f"{_where(exc)}; fix it, or run without it: {LOAD_ENV}={others}") from exc
        _register(pm, module, ep.name, origin)
    for plugin in extra_plugins:
        _register(pm, plugin, getattr(plugin, "__name__", repr(plugin)), "passed in")
    _check_pending(pm)
    return Registry(pm)


def _where(exc: BaseException) -> str:
    """`` at FILE:LINE``: where a plugin's import failed (the file with a syntax error, else the innermost frame of
    the plugin's own code), or nothing."""
    from harness.files import raising_frame

    if isinstance(exc, SyntaxError) and exc.filename:
        return f" at {exc.filename}:{exc.lineno}"
    frame = raising_frame(exc)
    return f" at {frame.filename}:{frame.lineno}" if frame else ""


def _builtin(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name not in ("harness.plugins", module_name):
            raise
        raise PluginError(f"built-in plugin {module_name!r} is not importable: the repository's plugins/ folder is installed as "
                          "harness.plugins; install the harness (`pip install -e .` in a checkout)") from exc


_registry: Registry | None = None


def registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _registry
    if _registry is None:
        _registry = build_registry()
    return _registry


def get(kind: str, name: str) -> Component:
    return registry().get(kind, name)


def components(kind: str) -> dict[str, Component]:
    return registry().components(kind)
