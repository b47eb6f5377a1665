"""pydantic validation errors translated into :class:`~kdlab.errors.Problem` s: the dotted key, its line in the
file, the value and what was expected, in a user's words."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ValidationError

from kdlab.config.source import Source
from kdlab.errors import Problem
from kdlab.schema import inner_model
from kdlab.suggest import did_you_mean


def problems_from_validation(exc: ValidationError, model: type[BaseModel] | None = None, prefix: tuple[Any, ...] = (),
                             source: Source | None = None) -> list[Problem]:
    """One problem per error of ``exc``, raised while validating ``model`` (which lets an unknown key list the
    known ones); ``prefix`` is the location of the validated mapping in the file."""
    out = []
    for err in exc.errors(include_url=False):
        loc = prefix + tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        key = ".".join(str(p) for p in loc)
        typ = err["type"]
        if typ == "extra_forbidden":
            msg = "unknown key" + _known_keys_hint(model, err)
        elif typ == "missing":
            msg = "required key is missing"
        else:
            msg = "expected " + _expectation(err)
        out.append(Problem(key, msg, err.get("input"), has_value=typ != "missing",
                           line=source.line_of(loc) if source else None))
    return out


def _known_keys_hint(model: type[BaseModel] | None, err: dict[str, Any]) -> str:
    sub: Any = model
    if sub is None:
        return ""
    for part in err["loc"][:-1]:
        field = getattr(sub, "model_fields", {}).get(part) if isinstance(part, str) else None
        if field is None:
            return ""
        sub = inner_model(field.annotation)
        if sub is None:
            return ""
    keys = sorted(getattr(sub, "model_fields", {}))
    if not keys:
        return " (this section takes no keys)"
    return f"{did_you_mean(err['loc'][-1], keys)} Known keys: {', '.join(keys)}"


def _expectation(err: dict[str, Any]) -> str:
    msg = err["msg"]
    ctx = err.get("ctx") or {}
    typ = err["type"]
    if typ.startswith("literal_error"):
        return f"one of {ctx.get('expected', '')}"
    if typ == "value_error":
        text = msg.removeprefix("Value error, ")
        return text.removeprefix("expected ") if text.startswith("expected ") else f"a valid value: {text}"
    # pydantic's "Input should be a valid number" -> "a valid number"
    return re.sub(r"^Input should (be )?", "", msg)
