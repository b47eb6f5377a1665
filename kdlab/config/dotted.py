"""Dotted config keys (``loss.params.temperature``): setting one in a nested mapping, parsing ``--set KEY=VALUE``,
and flattening a config into dotted keys as MLflow params name them."""

from __future__ import annotations

from typing import Any

import yaml

from kdlab.config.source import load_text
from kdlab.errors import ConfigError, Problem


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``key`` in nested ``data``, creating missing mappings; ``KeyError`` when a parent is not a mapping."""
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise KeyError(key)
        node = nxt
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` from ``--set``; the value is parsed as YAML (so ``0.5`` is a float, ``[64, 32]`` a list)."""
    if "=" not in text:
        raise ConfigError("--set", [Problem(text, "expected KEY=VALUE, e.g. loss.params.temperature=4", text)])
    key, raw = text.split("=", 1)
    try:
        value = load_text(raw)
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys matching the YAML: ``{"loss": {"params": {"alpha": 0.5}}}`` -> ``{"loss.params.alpha": 0.5}``."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        if not data and prefix:
            return {}
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    else:
        out[prefix] = data
    return out
