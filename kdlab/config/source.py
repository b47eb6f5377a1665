"""A YAML document and where it came from, so that errors can name the file and the line of a key.

Config files are read with hard limits (``docs/faults.md``): UTF-8 text of at most :data:`MAX_BYTES`, parsed by a
safe loader that refuses nesting deeper than :data:`MAX_DEPTH` and documents that aliases expand to more than
:data:`MAX_NODES` nodes ("billion laughs"), before anything walks the data."""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Any

import yaml

from kdlab.errors import ConfigError, Problem

#: the largest config file kdlab reads (1 MiB: run and study files are a few KiB)
MAX_BYTES = 1 << 20
#: the deepest nesting of mappings and lists, aliases followed
MAX_DEPTH = 64
#: the most nodes a document may hold once its aliases are expanded
MAX_NODES = 100_000


class _TooBig(yaml.YAMLError):
    def __init__(self, problem: str, mark: Any = None):
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


class BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with a nesting limit while it composes (a deep flow sequence would otherwise exhaust
    Python's recursion) and a node budget counted as if every alias were expanded."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooBig(f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand past :data:`MAX_NODES` nodes or :data:`MAX_DEPTH` levels, or refer to
    themselves, without expanding anything (each node is measured once: the document is a graph)."""
    done: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, depth)
    on_path = {id(root)}
    stack = [(root, iter(_children(root)))]
    while stack:
        node, pending = stack[-1]
        for child in pending:
            if id(child) in done:
                continue
            if id(child) in on_path:
                raise _TooBig("an alias refers to a node that contains it (a recursive document)", child.start_mark)
            on_path.add(id(child))
            stack.append((child, iter(_children(child))))
            break
        else:
            stack.pop()
            on_path.discard(id(node))
            kids = [done[id(c)] for c in _children(node)]
            size = 1 + sum(k[0] for k in kids)
            depth = 1 + max((k[1] for k in kids), default=0)
            if size > MAX_NODES:
                raise _TooBig(f"its aliases expand to more than {MAX_NODES} values (an alias bomb?)", node.start_mark)
            if depth > MAX_DEPTH:
                raise _TooBig(f"its aliases nest deeper than {MAX_DEPTH} levels", node.start_mark)
            done[id(node)] = (size, depth)


def parse_yaml(text: str) -> tuple[yaml.Node | None, Any]:
    """The composed node and the data of one YAML document, within the limits above; raises ``yaml.YAMLError``."""
    if len(text) > MAX_BYTES:
        raise _TooBig(f"longer than {MAX_BYTES} characters")
    loader = BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _check_expansion(node)
        return node, loader.construct_document(node)
    finally:
        loader.dispose()


def load_text(text: str) -> Any:
    """``yaml.safe_load`` within the limits (``--set`` values)."""
    return parse_yaml(text)[1]


def decode(raw: bytes, name: str) -> str:
    """``raw`` as UTF-8 text (a UTF-8 byte-order mark is dropped), or a config error saying what it is."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise ConfigError(name, [Problem("", "the file is UTF-16 or UTF-32 text (it starts with a byte-order mark); "
                                             "save it as UTF-8", has_value=False)])
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(name, [Problem("", f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                                             "save the file as UTF-8", has_value=False, line=line)]) from None


class Source:
    """A config file's text, parsed with a bounded safe loader, with the line of every key."""

    def __init__(self, name: str, text: str):
        self.name = name
        self.text = text
        try:
            self.node, data = parse_yaml(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark else None
            what = "refused" if isinstance(exc, _TooBig) else "not valid YAML"
            raise ConfigError(name, [Problem("", f"{what}: {getattr(exc, 'problem', None) or exc}", has_value=False,
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
            with open(p, "rb") as f:
                raw = f.read(MAX_BYTES + 1)
        except OSError as exc:
            raise ConfigError(str(path), [Problem("", f"cannot read file: {exc.strerror}", has_value=False)]) from None
        if len(raw) > MAX_BYTES:
            raise ConfigError(str(path), [Problem("", f"the file is larger than {MAX_BYTES // 1024} KiB, the most a "
                                                      "config file may be", has_value=False)])
        return cls(str(path), decode(raw, str(path)))

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
