"""kdlab: a laboratory for knowledge distillation.

The public API for plugin authors is what this module exports: :data:`hookimpl`, the data types
(:class:`Data`, :class:`Split`), the loss types (:class:`Loss`, :class:`LossInputs`, :class:`LossOutput`,
:class:`LossSetup`), :class:`RunInfo`, :data:`UNLABELED` and :func:`did_you_mean` (closest names for error
messages). Importing ``kdlab`` does not import torch or MLflow;
the torch-backed names load on first access.
"""

from __future__ import annotations

from typing import Any

import pluggy

__version__ = "0.1.0"

#: Marker for hook implementations in plugins: ``@kdlab.hookimpl def kdlab_register_losses(register): ...``
hookimpl = pluggy.HookimplMarker("kdlab")

_LAZY = {
    "Data": "kdlab.types",
    "Split": "kdlab.types",
    "Loss": "kdlab.types",
    "LossInputs": "kdlab.types",
    "LossOutput": "kdlab.types",
    "LossSetup": "kdlab.types",
    "RunInfo": "kdlab.types",
    "UNLABELED": "kdlab.types",
    "cache_dir": "kdlab.paths",
    "KdlabError": "kdlab.errors",
    "ConfigError": "kdlab.errors",
    "PluginError": "kdlab.errors",
    "did_you_mean": "kdlab.suggest",
    "Inputs": "kdlab.batch",
}

__all__ = ["__version__", "hookimpl", *_LAZY]


#: submodules plugins use as ``kdlab.<name>`` without importing them first
_SUBMODULES = ("batch", "functional")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"kdlab.{name}")
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kdlab' has no attribute {name!r}")
