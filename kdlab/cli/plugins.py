"""``kdlab plugins`` (what is installed, where it came from, what failed) and ``kdlab plugins show NAME`` (a
component's params, described from its params model's own schema)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from kdlab.errors import KdlabError
from kdlab.plugins import get_plugins
from kdlab.registry import KINDS, Component
from kdlab.schema import describe
from kdlab.suggest import did_you_mean


def main(args: argparse.Namespace) -> int:
    if args.action == "show":
        return show(args.name, kind=args.kind, as_json=args.json)
    return listing(as_json=args.json)


def describe_params(comp: Component) -> list[dict[str, Any]]:
    """One entry per field of the component's params model: name, type, required, default, constraints,
    description (nested sections as ``children``)."""
    return [asdict(f) for f in describe(comp.params)]


def inventory() -> dict[str, Any]:
    """What ``kdlab plugins --json`` prints."""
    from kdlab import __version__

    plugins = get_plugins()
    registry = plugins.registry
    by_plugin: dict[str, dict[str, list[dict[str, str]]]] = {}
    for comp in registry.all():
        by_plugin.setdefault(comp.plugin, {k: [] for k in KINDS})[comp.kind].append(
            {"name": comp.name, "description": comp.description})
    return {
        "kdlab_version": __version__,
        "plugins": [
            {"name": info.name, "distribution": info.distribution, "version": info.version,
             "location": info.location, "hooks": info.hooks,
             "components": by_plugin.get(info.name, {k: [] for k in KINDS})}
            for info in sorted(plugins.info.values(), key=lambda i: i.name)
        ],
        "failures": [dict(f.__dict__) for f in plugins.failures],
    }


def _console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def listing(as_json: bool = False) -> int:
    inv = inventory()
    if as_json:
        json.dump(inv, sys.stdout, indent=2, default=str)
        print()
        return 0
    from rich.markup import escape
    from rich.table import Table

    console = _console()
    if not inv["plugins"]:
        console.print("no plugins loaded (check KDLAB_PLUGINS / KDLAB_DISABLE_PLUGINS)")
    for p in inv["plugins"]:
        origin = f"{p['distribution']} {p['version']}" if p["distribution"] else "registered at run time"
        console.print(f"[bold]{escape(p['name'])}[/bold]  {escape(origin)}  [dim]{escape(p['location'] or '')}[/dim]")
        console.print(f"  hooks: {', '.join(p['hooks']) or '(none)'}")
        table = Table(show_header=False, box=None, padding=(0, 2), pad_edge=False)
        for kind in KINDS:
            for c in p["components"][kind]:
                table.add_row(f"  {kind}", c["name"], escape(c["description"]))
        if table.row_count:
            console.print(table)
    if inv["failures"]:
        console.print("[bold red]failures[/bold red]")
    for f in inv["failures"]:
        origin = f" ({f['distribution']} {f['version']})" if f["distribution"] else ""
        console.print(f"  [red]{escape(f['name'])}[/red]{escape(origin)}: {escape(f['reason'])}")
    return 0


def show(name: str | None, kind: str | None = None, as_json: bool = False) -> int:
    if not name:
        raise KdlabError("kdlab plugins show: give a component name, e.g. `kdlab plugins show kd`")
    registry = get_plugins().registry
    matches = [c for c in registry.all(kind) if c.name == name]
    if not matches:
        names = sorted({c.name for c in registry.all(kind)})
        what = f"no {kind} component" if kind else "no component"
        raise KdlabError(f"{what} named {name!r}{did_you_mean(name, names)} Known: {', '.join(names) or 'none'}")
    docs = [{"kind": c.kind, "name": c.name, "description": c.description, "plugin": c.plugin,
             "distribution": c.distribution, "version": c.version, "params": describe_params(c)} for c in matches]
    if as_json:
        json.dump(docs if len(docs) > 1 else docs[0], sys.stdout, indent=2, default=str)
        print()
        return 0
    from rich.markup import escape
    from rich.table import Table

    console = _console()
    for d in docs:
        origin = f"plugin {d['plugin']}" + (f", {d['distribution']} {d['version']}" if d["distribution"] else "")
        console.print(f"[bold]{d['kind']} {d['name']}[/bold] — {escape(d['description'])}  "
                      f"[dim]({escape(origin)})[/dim]")
        if not d["params"]:
            console.print("  (no params)")
            continue
        table = Table("param", "type", "default", "constraints", "description")
        for prm in d["params"]:
            default = "(required)" if prm["required"] else json.dumps(prm["default"], default=str)
            table.add_row(prm["name"], escape(prm["type"]), escape(default), prm["constraints"],
                          escape(prm["description"]))
        console.print(table)
    return 0
