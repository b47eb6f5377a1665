""""Did you mean ...?": the closest known name to a misspelt one, phrased once for every error message."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(name: str, known: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The known name closest to ``name``, or ``None`` when none is close enough."""
    found = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=cutoff)
    return found[0] if found else None


def did_you_mean(name: str, known: Iterable[str], cutoff: float = 0.6, n: int = 1) -> str:
    """``"; did you mean 'x'?"`` for the closest known name (``n`` > 1: up to ``n`` of them, closest first), or
    ``""``: appended to an error's first clause. Public as ``kdlab.did_you_mean`` for plugins' own errors."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=n, cutoff=cutoff)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
