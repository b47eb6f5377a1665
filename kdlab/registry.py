"""The component registry: what the contribution hooks register, looked up by kind and name.

A *component* is a name, a pydantic params model, a factory and a one-line description. Plugins never build a
registry themselves; they receive a ``register`` callback from the contribution hooks (see :mod:`kdlab.hookspecs`).
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict

from kdlab.errors import PluginError
from kdlab.suggest import did_you_mean

#: The four kinds of component, in the order the product names them.
KINDS: tuple[str, ...] = ("data", "teacher", "student", "loss")

_NAME = re.compile(r"^[a-z][a-z0-9_.\-]*$")


class NoParams(BaseModel):
    """Params model of a component that takes no params."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class LoadFailure:
    """A plugin that failed to load, or a contribution of one that failed; ``kdlab plugins`` lists them."""

    name: str
    distribution: str | None
    version: str | None
    reason: str


@dataclass(frozen=True)
class Component:
    """One registered component."""

    kind: str
    name: str
    factory: Callable[..., Any]
    params: type[BaseModel]
    description: str
    plugin: str  # plugin name in the plugin manager (the entry-point name for installed plugins)
    distribution: str | None = None
    version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def origin(self) -> str:
        """``plugin (distribution version)`` for error messages."""
        if self.distribution:
            return f"plugin {self.plugin!r} ({self.distribution} {self.version})"
        return f"plugin {self.plugin!r}"

    def validate_params(self, values: dict[str, Any] | None) -> BaseModel:
        return self.params.model_validate(values or {})

    def build(self, params: BaseModel, **context: Any) -> Any:
        """Call the factory with ``params`` and whichever ``context`` keywords it accepts.

        A factory that raises is reported as a :class:`PluginError` naming the plugin, its version and the
        component, with the original exception chained.
        """
        try:
            accepted = _accepted_kwargs(self.factory, context)
            return self.factory(params, **accepted)
        except PluginError:
            raise
        except Exception as exc:  # noqa: BLE001 - the point is to name the plugin whatever it raised
            raise PluginError(
                f"{self.kind} {self.name!r} from {self.origin} failed to build: {type(exc).__name__}: {exc}"
            ) from exc


def _accepted_kwargs(factory: Callable[..., Any], context: dict[str, Any]) -> dict[str, Any]:
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return context
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return context
    return {k: v for k, v in context.items() if k in sig.parameters}


class UnknownComponent(LookupError):
    def __init__(self, kind: str, name: str, available: list[str]):
        self.kind, self.name, self.available = kind, name, available
        hint = did_you_mean(name, available, 0.5)
        listing = ", ".join(available) if available else "none are installed"
        super().__init__(f"unknown {kind} {name!r}{hint} Available: {listing}")


class Registry:
    """Components by kind and name. Built by :func:`kdlab.plugins.get_registry` from the contribution hooks."""

    def __init__(self) -> None:
        self._components: dict[str, dict[str, Component]] = {k: {} for k in KINDS}
        #: (kind, name) registered by two plugins -> the error naming both; the name is unusable until one goes
        self._conflicts: dict[tuple[str, str], str] = {}
        #: contribution hooks that failed, and names registered twice, while this registry was built
        self.failures: list[LoadFailure] = []

    def registrar(
        self, kind: str, plugin: str, distribution: str | None = None, version: str | None = None
    ) -> Callable[..., Component]:
        """The ``register`` callback handed to one plugin's contribution hook for ``kind``."""

        def register(
            name: str,
            factory: Callable[..., Any],
            params: type[BaseModel] | None = None,
            description: str | None = None,
            **extra: Any,
        ) -> Component:
            return self.add(
                Component(
                    kind=kind,
                    name=name,
                    factory=factory,
                    params=params or NoParams,
                    description=description if description is not None else _first_line(factory),
                    plugin=plugin,
                    distribution=distribution,
                    version=version,
                    extra=extra,
                )
            )

        return register

    def add(self, component: Component) -> Component:
        who = component.origin
        if not isinstance(component.name, str) or not _NAME.match(component.name):
            raise PluginError(
                f"{who} registered a {component.kind} named {component.name!r}: names are lower-case letters, "
                "digits, '_', '-' or '.', starting with a letter"
            )
        if not callable(component.factory):
            raise PluginError(f"{who} registered {component.kind} {component.name!r} with a factory that is not "
                              "callable")
        if not (isinstance(component.params, type) and issubclass(component.params, BaseModel)):
            raise PluginError(
                f"{who} registered {component.kind} {component.name!r} with params={component.params!r}: "
                "expected a pydantic BaseModel subclass"
            )
        table = self._components[component.kind]
        key = (component.kind, component.name)
        if component.name in table or key in self._conflicts:
            first = table.pop(component.name).origin if component.name in table else self._first_of(key)
            # Neither plugin wins silently: the name becomes unusable (using it raises this message), while both
            # plugins keep their other components and ``kdlab plugins`` lists the clash under failures.
            self._conflicts[key] = (
                f"{component.kind} {component.name!r} is registered twice: by {first} and by {who}. "
                "Disable one of them with KDLAB_DISABLE_PLUGINS."
            )
            self.failures.append(
                LoadFailure(component.plugin, component.distribution, component.version, self._conflicts[key]))
            return component
        table[component.name] = component
        return component

    def _first_of(self, key: tuple[str, str]) -> str:
        return self._conflicts[key].split(" by ", 1)[1].split(" and by ", 1)[0]

    def discard(self, kind: str, names: list[str]) -> None:
        """Forget components (those of a contribution hook that raised half-way)."""
        for name in names:
            self._components[kind].pop(name, None)

    def get(self, kind: str, name: str) -> Component:
        if (kind, name) in self._conflicts:
            raise PluginError(self._conflicts[(kind, name)])
        try:
            return self._components[kind][name]
        except KeyError:
            raise UnknownComponent(kind, name, self.names(kind)) from None

    def names(self, kind: str) -> list[str]:
        return sorted(self._components[kind])

    def all(self, kind: str | None = None) -> list[Component]:
        kinds = [kind] if kind else list(KINDS)
        return [self._components[k][n] for k in kinds for n in sorted(self._components[k])]


def _first_line(obj: Any) -> str:
    doc = (inspect.getdoc(obj) or "").strip()
    return " ".join(doc.split("\n\n")[0].split()) if doc else ""
