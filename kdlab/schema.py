"""Describe a pydantic model's fields for people, from its own JSON schema (``model_json_schema()``): the one
description behind ``kdlab plugins show``, ``docs/config.md`` and ``docs/methods.md``."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

_BASIC = {"integer": "int", "number": "float", "boolean": "bool", "string": "str", "null": "None", "object": "mapping"}
_LIMITS = (("exclusiveMinimum", ">"), ("minimum", ">="), ("exclusiveMaximum", "<"), ("maximum", "<="),
           ("multipleOf", "multiple of"), ("minItems", "min length"), ("maxItems", "max length"),
           ("minLength", "min length"), ("maxLength", "max length"))


@dataclass
class FieldDoc:
    """One field: its YAML-facing type (``float``, ``list[int]``, ``int | None``, ``relu | gelu``, or a section's
    model name), whether it is required, its default (JSON value), constraints (``> 0, <= 1``), description, and
    the fields of a nested section."""

    name: str
    type: str
    required: bool
    default: Any
    constraints: str
    description: str
    children: list[FieldDoc] = field(default_factory=list)

    @property
    def is_section(self) -> bool:
        return bool(self.children)


def describe(model: type[BaseModel]) -> list[FieldDoc]:
    """The fields of ``model`` in declaration order, nested sections described recursively."""
    schema = model.model_json_schema()
    return _fields(schema, schema.get("$defs", {}), model)


def _fields(schema: dict[str, Any], defs: dict[str, Any], model: type[BaseModel] | None) -> list[FieldDoc]:
    required = set(schema.get("required", []))
    out = []
    for name, prop in schema.get("properties", {}).items():
        ref = _ref(prop, defs)
        if "default" in prop:
            default = prop["default"]
        elif name in required:
            default = None
        else:  # a default_factory: JSON schema leaves it out; ask the model
            value = model.model_fields[name].get_default(call_default_factory=True) if model is not None else None
            default = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
        sub_model = _submodel(model, name)
        children = _fields(defs[ref], defs, sub_model) if ref else []
        out.append(FieldDoc(name=name, type=type_text(prop, defs), required=name in required, default=default,
                            constraints=", ".join(_limits(prop)), description=prop.get("description", ""),
                            children=children))
    return out


def type_text(prop: dict[str, Any], defs: dict[str, Any]) -> str:
    """A JSON-schema fragment's type as a user writes it in YAML terms."""
    if "$ref" in prop:
        return prop["$ref"].rsplit("/", 1)[-1]
    if "enum" in prop:
        return " | ".join(str(v) for v in prop["enum"])
    if "const" in prop:
        return str(prop["const"])
    if "anyOf" in prop:
        return " | ".join(type_text(p, defs) for p in prop["anyOf"])
    typ = prop.get("type")
    if typ == "array":
        items = prop.get("items")
        return f"list[{type_text(items, defs)}]" if items else "list"
    if typ == "object" and isinstance(prop.get("additionalProperties"), dict):
        return f"mapping of {type_text(prop['additionalProperties'], defs)}"
    if isinstance(typ, list):
        return " | ".join(_BASIC.get(t, t) for t in typ)
    return _BASIC.get(typ, "any") if typ else "any"


def _ref(prop: dict[str, Any], defs: dict[str, Any]) -> str | None:
    """The section model a field holds (``X`` or ``X | None``), by its name in ``$defs``."""
    candidates = [prop] + prop.get("anyOf", [])
    for c in candidates:
        if "$ref" in c:
            name = c["$ref"].rsplit("/", 1)[-1]
            return name if name in defs else None
    return None


def _limits(prop: dict[str, Any]) -> list[str]:
    found = []
    for p in [prop] + prop.get("anyOf", []):
        found += [f"{sym} {p[key]}" for key, sym in _LIMITS if key in p]
    return found


def _submodel(model: type[BaseModel] | None, name: str) -> type[BaseModel] | None:
    if model is None or name not in model.model_fields:
        return None
    return inner_model(model.model_fields[name].annotation)


def inner_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (``X``, ``X | None``, ``list[X]``, ``dict[str, X]``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        m = inner_model(arg)
        if m is not None:
            return m
    return None
