"""A failed trial's reason in one line (the error's type, message and where it was raised), and out-of-memory
errors recognised and their memory given back."""

from __future__ import annotations

import traceback

from kdlab.contracts import is_oom


def reason_of(exc: BaseException) -> str:
    from kdlab.errors import KdlabError

    if isinstance(exc, KdlabError):
        return f"{type(exc).__name__}: {exc}"
    if is_oom(exc):
        return f"out of memory: {str(exc).splitlines()[0][:500]}"
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {tb[-1].filename}:{tb[-1].lineno}" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}"


def free_cuda() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
