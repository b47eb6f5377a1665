"""A YAML document and where it came from, so that errors can name the file and the line of a key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kdlab.errors import ConfigError, Problem


class Source:
    """A config file's text, parsed with YAML's safe loader, with the line of every key."""

    def __init__(self, name: str, text: str):
        self.name = name
        self.text = text
        try:
            self.node = yaml.compose(text, Loader=yaml.SafeLoader)
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark else None
            raise ConfigError(name, [Problem("", f"not valid YAML: {getattr(exc, 'problem', exc)}", has_value=False,
                                             line=line)]) from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(name, [Problem("", "expected a mapping of config sections", data)])
        self.data: dict[str, Any] = data

    @classmethod
    def from_path(cls, path: str | Path) -> Source:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise ConfigError(str(path), [Problem("", f"cannot read file: {exc.strerror}", has_value=False)]) from None
        return cls(str(path), text)

    def line_of(self, loc: tuple[Any, ...] | list[Any]) -> int | None:
        """The line of the deepest key of ``loc`` (a path of keys and list indices) that the file has."""
        node, line = self.node, None
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                nxt = None
                for k, v in node.value:
                    if k.value == str(part):
                        nxt, line = v, k.start_mark.line + 1
                        break
                if nxt is None:
                    return line
                node = nxt
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                return line
        return line


def dump_yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
