"""The plugin manager: one ``pluggy.PluginManager("kdlab")``, loaded lazily from the ``kdlab`` entry-point group.

Environment variables (public interface):

``KDLAB_PLUGINS``
    Comma-separated entry-point names: load only these installed plugins. Unset: load all. Empty: load none.
``KDLAB_DISABLE_PLUGINS``
    Comma-separated entry-point names not to load.
``KDLAB_TRACE_PLUGINS``
    ``1`` prints every hook call, its arguments and its result to stderr.

A plugin whose entry point fails to import, or whose hook implementations are invalid (a misspelt argument, an
unknown hook, a hook function without ``@kdlab.hookimpl``), is skipped: kdlab starts,
warns which plugin failed and why, and ``kdlab plugins`` lists it under failures. A contribution hook that raises
loses only the components it registered in that call; a component name registered by two plugins is unusable (using
it raises the error naming both) until one of them is disabled.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from kdlab import hookspecs
from kdlab.errors import PluginError
from kdlab.registry import KINDS, LoadFailure, Registry
from kdlab.suggest import closest

ENTRY_POINT_GROUP = "kdlab"
ENV_PLUGINS = "KDLAB_PLUGINS"
ENV_DISABLE = "KDLAB_DISABLE_PLUGINS"
ENV_TRACE = "KDLAB_TRACE_PLUGINS"

#: contribution hook per component kind
CONTRIBUTION_HOOKS: dict[str, str] = {
    "data": "kdlab_register_data",
    "teacher": "kdlab_register_teachers",
    "student": "kdlab_register_students",
    "loss": "kdlab_register_losses",
}


@dataclass
class PluginInfo:
    name: str
    distribution: str | None = None
    version: str | None = None
    location: str | None = None  # module file the plugin was loaded from
    hooks: list[str] = field(default_factory=list)


class Plugins:
    """The loaded plugins, their metadata, load failures and the component registry built from them."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("kdlab")
        self.pm.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        self.load_failures: list[LoadFailure] = []
        self._registry: Registry | None = None
        self._undo_trace = None

    # -- loading --------------------------------------------------------------------------------------------------

    def load_entry_points(self) -> None:
        only = _env_list(ENV_PLUGINS)
        disabled = set(_env_list(ENV_DISABLE) or [])
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if ep.name in disabled or (only is not None and ep.name not in only) or ep.name in self.info:
                continue
            dist = getattr(ep, "dist", None)
            dname, dver = (dist.name, dist.version) if dist is not None else (None, None)
            try:
                obj = ep.load()
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop kdlab
                self._fail(ep.name, dname, dver, f"import of {ep.value!r} failed: {type(exc).__name__}: {exc}")
                continue
            try:
                self.register(obj, ep.name, distribution=dname, version=dver)
            except PluginError as exc:
                self._fail(ep.name, dname, dver, str(exc))

    @property
    def failures(self) -> list[LoadFailure]:
        """Plugins that failed to load, then contribution hooks that failed while the registry was built."""
        return self.load_failures + self.registry.failures

    def _fail(self, name: str, dist: str | None, version: str | None, reason: str) -> None:
        self.load_failures.append(LoadFailure(name, dist, version, reason))
        print(f"kdlab: warning: plugin {name!r} was not loaded: {reason}", file=sys.stderr)

    def register(self, obj: Any, name: str, *, distribution: str | None = None, version: str | None = None) -> None:
        """Register a plugin object (usually a module) under ``name``; validate its hook implementations.

        Raises :class:`PluginError` naming the plugin for an implementation with wrong argument names, one that
        matches no hook, or a function named like a hook without ``@kdlab.hookimpl``; the plugin is then left
        unregistered.
        """
        who = f"plugin {name!r}" + (f" ({distribution} {version})" if distribution else "")
        if name in self.info or self.pm.has_plugin(name):
            raise PluginError(f"{who}: a plugin named {name!r} is already registered")
        # pluggy silently ignores a function named like a hook but not marked: the plugin would register nothing.
        unmarked = [h for h in self.hook_names()
                    if callable(getattr(obj, h, None)) and not hasattr(getattr(obj, h), f"{ENTRY_POINT_GROUP}_impl")]
        if unmarked:
            raise PluginError(f"{who} defines {', '.join(unmarked)} without the @kdlab.hookimpl marker")
        try:
            self.pm.register(obj, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"{who}: {self._explain_arguments(obj) or exc}") from exc
        unknown = [hc.name for hc in (self.pm.get_hookcallers(obj) or []) if hc.spec is None]
        if unknown:
            self.pm.unregister(obj)
            known = self.hook_names()
            hints = []
            for hook in unknown:
                close = closest(hook, known)
                hints.append(f"{hook!r}" + (f" (did you mean {close!r}?)" if close else ""))
            raise PluginError(f"{who} implements unknown hook {', '.join(hints)}; known hooks: {', '.join(known)}")
        hooks = sorted(hc.name for hc in (self.pm.get_hookcallers(obj) or []))
        location = getattr(obj, "__file__", None) or getattr(type(obj), "__module__", None)
        self.info[name] = PluginInfo(name, distribution, version, location, hooks)
        self._registry = None

    def _explain_arguments(self, obj: Any) -> str:
        """Which hook implementation of ``obj`` takes an argument its hook does not have, and the closest one."""
        import inspect

        for hook in self.hook_names():
            fn = getattr(obj, hook, None)
            if fn is None or not hasattr(fn, f"{ENTRY_POINT_GROUP}_impl"):
                continue
            allowed = list(getattr(self.pm.hook, hook).spec.argnames)
            for arg in inspect.signature(fn).parameters:
                if arg not in allowed:
                    close = closest(arg, allowed)
                    hint = f" (did you mean {close!r}?)" if close else ""
                    return (f"{hook} takes an argument {arg!r} that the hook does not have{hint}; "
                            f"its arguments are: {', '.join(allowed)}")
        return ""

    def add_observer(self, observer: Any) -> str:
        """Register a lifecycle observer (an object with ``@kdlab.hookimpl`` methods) for a while; returns the name
        to remove it by. Observers are not plugins of the registry: they contribute no components and are not
        listed by ``kdlab plugins``."""
        name = f"observer:{type(observer).__name__}:{id(observer)}"
        self.pm.register(observer, name=name)
        return name

    def remove_observer(self, name: str) -> None:
        self.pm.unregister(name=name)

    def hook_names(self) -> list[str]:
        """The hooks kdlab defines (those with a spec; pluggy also keeps callers for unknown implementations)."""
        return sorted(n for n, c in vars(self.pm.hook).items() if n.startswith("kdlab_") and c.spec is not None)

    def unregister(self, name: str) -> None:
        self.pm.unregister(name=name)
        self.info.pop(name, None)
        self._registry = None

    def trace(self, enabled: bool = True) -> None:
        if enabled and self._undo_trace is None:

            def before(hook_name, hook_impls, kwargs):
                names = [i.plugin_name for i in hook_impls]
                print(f"kdlab trace: {hook_name}({', '.join(sorted(kwargs))}) -> {names}", file=sys.stderr)

            def after(outcome, hook_name, hook_impls, kwargs):
                exc = outcome.exception
                res = f"raised {exc!r}" if exc else f"returned {outcome.get_result()!r}"
                print(f"kdlab trace: {hook_name} {res}", file=sys.stderr)

            self._undo_trace = self.pm.add_hookcall_monitoring(before, after)
        elif not enabled and self._undo_trace is not None:
            self._undo_trace()
            self._undo_trace = None

    # -- registry -------------------------------------------------------------------------------------------------

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = self._build_registry()
        return self._registry

    def _build_registry(self) -> Registry:
        reg = Registry()
        for kind in KINDS:
            caller = getattr(self.pm.hook, CONTRIBUTION_HOOKS[kind])
            # Call each implementation on its own so that every component is attributed to the plugin that
            # registered it (pluggy's caller would hide who called ``register``), and so that one broken plugin
            # costs only its own components: kdlab still starts and ``kdlab plugins`` lists the failure.
            for impl in reversed(caller.get_hookimpls()):
                info = self.info.get(impl.plugin_name) or PluginInfo(impl.plugin_name)
                register = reg.registrar(kind, impl.plugin_name, info.distribution, info.version)
                if os.environ.get(ENV_TRACE):
                    print(f"kdlab trace: {caller.name}(register) -> {impl.plugin_name}", file=sys.stderr)
                before = set(reg.names(kind))
                try:
                    impl.function(**{a: register for a in impl.argnames})
                except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop kdlab
                    reg.discard(kind, [n for n in reg.names(kind) if n not in before])
                    who = f"plugin {impl.plugin_name!r}" + (
                        f" ({info.distribution} {info.version})" if info.distribution else ""
                    )
                    reason = str(exc) if isinstance(exc, PluginError) else (
                        f"{who} raised in {caller.name}: {type(exc).__name__}: {exc}")
                    reg.failures.append(LoadFailure(impl.plugin_name, info.distribution, info.version, reason))
        for failure in reg.failures:
            print(f"kdlab: warning: {failure.reason}", file=sys.stderr)
        return reg

    @property
    def hook(self):
        return self.pm.hook


_PLUGINS: Plugins | None = None


def get_plugins() -> Plugins:
    """The process-wide :class:`Plugins`, loading installed plugins on first use."""
    global _PLUGINS
    if _PLUGINS is None:
        plugins = Plugins()
        plugins.load_entry_points()
        if os.environ.get(ENV_TRACE):
            plugins.trace(True)
        _PLUGINS = plugins
    return _PLUGINS


def get_registry() -> Registry:
    return get_plugins().registry


def reset_plugins() -> None:
    """Forget the loaded plugins (tests, or after changing ``KDLAB_PLUGINS``)."""
    global _PLUGINS
    _PLUGINS = None


def _env_list(var: str) -> list[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return [p.strip() for p in raw.split(",") if p.strip()]
