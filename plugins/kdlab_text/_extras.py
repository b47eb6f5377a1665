"""The optional libraries of the ``text`` extra (transformers, tokenizers, datasets), imported only when used.

The components register whether or not the libraries are installed, so their names are known and listed; it is
validating their params (``kdlab validate``, ``kdlab run``) that needs the library and says how to install it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

INSTALL_HINT = "pip install 'kdlab[text]'"


def require(name: str, what: str = "") -> ModuleType:
    """Import ``name`` (``transformers``, ``tokenizers``, ``datasets``, ``pyarrow``) or raise a ``ValueError``
    saying how to install it; ``what`` says what needs it.

    Raised inside a pydantic validator, the message reaches the user as a config error naming the file, the line
    and the key."""
    try:
        return importlib.import_module(name)
    except ImportError:
        need = f" ({what} needs it)" if what else ""
        raise ValueError(f"{name} is not installed{need}: {INSTALL_HINT}") from None
    except Exception as exc:  # noqa: BLE001 - e.g. a release built against another numpy or torch
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ValueError(f"{name} is installed but cannot be imported ({type(exc).__name__}: {first}): "
                         f"{INSTALL_HINT}") from None
