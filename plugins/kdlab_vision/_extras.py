"""The optional libraries behind the ``torchvision`` and ``timm`` components, imported only when used.

The components register whether or not the libraries are installed, so their names are known and listed; it is
validating their params (``kdlab validate``, ``kdlab run``) that needs the library and says how to install it.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from types import ModuleType

import kdlab

INSTALL_HINT = "pip install 'kdlab[vision]'"


def require(name: str) -> ModuleType:
    """Import ``name`` (``torchvision`` or ``timm``) or raise a ``ValueError`` saying how to install it.

    Raised inside a pydantic validator, the message reaches the user as a config error naming the file, the line
    and the key."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ValueError(f"{name} is not installed: {INSTALL_HINT}") from None
    except Exception as exc:  # noqa: BLE001 - e.g. a torchvision build that does not match the installed torch
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ValueError(f"{name} is installed but cannot be imported ({type(exc).__name__}: {first}); install a "
                         f"release that matches torch {_torch_version()}: {INSTALL_HINT}") from None


def _torch_version() -> str:
    try:
        import torch

        return torch.__version__
    except Exception:  # noqa: BLE001
        return "(not importable)"


def did_you_mean(name: str, known: Iterable[str], n: int = 5) -> str:
    """``"; did you mean 'a', 'b'?"`` with up to ``n`` closest known names, or ``""`` when none is close."""
    return kdlab.did_you_mean(name, known, n=n)
