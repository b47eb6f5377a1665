"""``kdlab plugins``: what is installed, where it came from, and what each component takes."""

from __future__ import annotations

import json
import sys
from typing import Any

from kdlab.errors import KdlabError
from kdlab.registry import KINDS, Component


def _plugins():
    from kdlab.plugins import get_plugins

    return get_plugins()


def describe_params(comp: Component) -> list[dict[str, Any]]:
    out = []
    for name, f in comp.params.model_fields.items():
        default = f.get_default(call_default_factory=True) if not f.is_required() else None
        out.append({
            "name": name,
            "type": _type_name(f.annotation),
            "required": f.is_required(),
            "default": default,
            "description": f.description or "",
        })
    return out


def _type_name(annotation: Any) -> str:
    s = getattr(annotation, "__name__", None) if getattr(annotation, "__args__", None) is None else None
    return s or str(annotation).replace("typing.", "")


def inventory() -> dict[str, Any]:
    plugins = _plugins()
    registry = plugins.registry
    by_plugin: dict[str, dict[str, list[dict[str, str]]]] = {}
    for comp in registry.all():
        by_plugin.setdefault(comp.plugin, {k: [] for k in KINDS})[comp.kind].append(
            {"name": comp.name, "description": comp.description})
    return {
        "plugins": [
            {"name": info.name, "distribution": info.distribution, "version": info.version,
             "location": info.location, "hooks": info.hooks,
             "components": by_plugin.get(info.name, {k: [] for k in KINDS})}
            for info in sorted(plugins.info.values(), key=lambda i: i.name)
        ],
        "failures": [f.__dict__ for f in plugins.failures],
    }


def plugins_list(as_json: bool = False) -> int:
    inv = inventory()
    if as_json:
        json.dump(inv, sys.stdout, indent=2, default=str)
        print()
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=True)
    for p in inv["plugins"]:
        ver = f" {p['distribution']} {p['version']}" if p["distribution"] else ""
        console.print(f"[bold]{p['name']}[/bold]{ver}  [dim]{p['location'] or ''}[/dim]")
        console.print(f"  hooks: {', '.join(p['hooks'])}")
        table = Table(show_header=False, box=None, padding=(0, 2))
        for kind in KINDS:
            for c in p["components"][kind]:
                table.add_row(f"  {kind}", c["name"], c["description"])
        if table.row_count:
            console.print(table)
    for f in inv["failures"]:
        console.print(f"[red]failed[/red] {f['name']} {f['distribution'] or ''} {f['version'] or ''}: {f['reason']}")
    return 0


def plugins_show(name: str | None, kind: str | None = None, as_json: bool = False) -> int:
    if not name:
        raise KdlabError("kdlab plugins show: give a component name, e.g. `kdlab plugins show kd`")
    registry = _plugins().registry
    matches = [c for c in registry.all(kind) if c.name == name]
    if not matches:
        import difflib

        names = sorted({c.name for c in registry.all(kind)})
        close = difflib.get_close_matches(name, names, n=1)
        raise KdlabError(f"no component named {name!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                         + f" Known: {', '.join(names)}")
    docs = [{"kind": c.kind, "name": c.name, "description": c.description, "plugin": c.plugin,
             "distribution": c.distribution, "version": c.version, "params": describe_params(c)} for c in matches]
    if as_json:
        json.dump(docs if len(docs) > 1 else docs[0], sys.stdout, indent=2, default=str)
        print()
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=True)
    for d in docs:
        console.print(f"[bold]{d['kind']} {d['name']}[/bold] — {d['description']}  [dim](plugin {d['plugin']}"
                      f"{' ' + d['distribution'] + ' ' + d['version'] if d['distribution'] else ''})[/dim]")
        table = Table("param", "type", "default", "description")
        for prm in d["params"]:
            table.add_row(prm["name"], prm["type"], "(required)" if prm["required"] else repr(prm["default"]),
                          prm["description"])
        console.print(table if d["params"] else "  (no params)")
    return 0
