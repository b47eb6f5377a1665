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
    out: list[Problem] = []
    for err in exc.errors(include_url=False):
        loc = prefix + tuple(p for p in err["loc"] if not (isinstance(p, str) and _UNION_TAG.match(p)))
        key = ".".join(str(p) for p in loc)
        typ = err["type"]
        if typ == "extra_forbidden":
            msg = "unknown key" + _known_keys_hint(model, err)
        elif typ == "missing":
            msg = "required key is missing"
        else:
            msg = "expected " + _expectation(err)
        same = next((i for i, p in enumerate(out) if p.key == key and p.message.startswith("expected ")), None)
        if same is not None and msg.startswith("expected "):
            # the members of a union (``int | "auto"``) each said what they expected: one problem lists them all
            prev = out[same]
            out[same] = Problem(key, f"{prev.message} or {msg.removeprefix('expected ')}", prev.value,
                                has_value=prev.has_value, line=prev.line)
            continue
        out.append(Problem(key, msg, err.get("input"), has_value=typ != "missing",
                           line=source.line_of(loc) if source else None))
    return out


#: the location parts pydantic adds for the member of a union or a validator, not a key of the file
_UNION_TAG = re.compile(r"^(function-.*|literal\[.*\]|list\[.*\]|dict\[.*\]|int|float|str|bool|none|"
                        r"constrained-.*|[A-Z][a-z]\w*)$")


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
    if typ == "too_short":
        n = ctx.get("min_length", 1)
        return f"at least {n} item{'s' if n != 1 else ''}"
    if typ == "value_error":
        text = msg.removeprefix("Value error, ")
        return text.removeprefix("expected ") if text.startswith("expected ") else f"a valid value: {text}"
    # pydantic's "Input should be a valid number" -> "a valid number"
    return re.sub(r"^Input should (be )?", "", msg)
