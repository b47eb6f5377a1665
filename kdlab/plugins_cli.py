"""``kdlab plugins``: what is installed, where it came from, what failed, and what each component takes.

``kdlab plugins [--json]`` lists every plugin (entry-point name, distribution, version, the file it was loaded from,
the hooks it implements, its components per kind with their one-line descriptions) and every plugin that failed.
``kdlab plugins show NAME [--kind KIND] [--json]`` prints a component's params from its pydantic model. Neither
imports MLflow or Optuna.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from kdlab.errors import KdlabError
from kdlab.registry import KINDS, Component


def _plugins():
    from kdlab.plugins import get_plugins

    return get_plugins()


def describe_params(comp: Component) -> list[dict[str, Any]]:
    """One entry per field of the component's params model: name, type, required, default, constraints,
    description."""
    out = []
    for name, f in comp.params.model_fields.items():
        default = None if f.is_required() else f.get_default(call_default_factory=True)
        if hasattr(default, "model_dump"):
            default = default.model_dump(mode="json")
        out.append({
            "name": name,
            "type": type_name(f.annotation),
            "required": f.is_required(),
            "default": default,
            "constraints": ", ".join(_constraint(m) for m in f.metadata if _constraint(m)),
            "description": f.description or "",
        })
    return out


def type_name(annotation: Any) -> str:
    """``int``, ``list[int]``, ``float | None``, ``Literal['relu', 'gelu']``: as a user would write it in YAML's
    terms, without module paths."""
    if isinstance(annotation, type) and not getattr(annotation, "__args__", None):
        return annotation.__name__
    text = str(annotation).replace("typing.", "").replace("NoneType", "None")
    text = re.sub(r"Optional\[(.*)\]$", r"\1 | None", text)
    text = re.sub(r"Literal\[([^\]]*)\]", lambda m: " | ".join(v.strip() for v in m.group(1).split(",")), text)
    return re.sub(r"\b(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)", r"\1", text)  # kdlab_losses.online.ModelSpec -> ModelSpec


_OPS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "multiple_of": "multiple of", "min_length": "min length",
        "max_length": "max length"}


def _constraint(meta: Any) -> str:
    for attr, op in _OPS.items():
        value = getattr(meta, attr, None)
        if value is not None:
            return f"{op} {value}"
    return ""


def inventory() -> dict[str, Any]:
    """What ``kdlab plugins --json`` prints."""
    from kdlab import __version__

    plugins = _plugins()
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


def plugins_list(as_json: bool = False) -> int:
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


def plugins_show(name: str | None, kind: str | None = None, as_json: bool = False) -> int:
    if not name:
        raise KdlabError("kdlab plugins show: give a component name, e.g. `kdlab plugins show kd`")
    registry = _plugins().registry
    matches = [c for c in registry.all(kind) if c.name == name]
    if not matches:
        import difflib

        names = sorted({c.name for c in registry.all(kind)})
        close = difflib.get_close_matches(name, names, n=1)
        what = f"no {kind} component" if kind else "no component"
        raise KdlabError(f"{what} named {name!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                         + f" Known: {', '.join(names) or 'none'}")
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
