"""The optional libraries of the ``text`` extra (transformers, tokenizers, datasets), imported only when used.

The components register whether or not the libraries are installed, so their names are known and listed; it is
validating their params (``kdlab validate``, ``kdlab run``) that needs the library and says how to install it.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterator
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


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """The progress bars of transformers, datasets and huggingface_hub off, restored after (of those already
    imported: import the library first).

    Besides the noise, the first tqdm bar of a process starts a monitor thread that stays; a process that runs
    another thread starts a study's workers with spawn instead of fork (kdlab.study.runner.start_method), and a
    study loads its data and teacher in the main process before starting the workers."""
    switches = []  # (is_enabled, disable, enable) of each library that has them
    for module, enabled, off, on in (
            ("transformers.utils.logging", "is_progress_bar_enabled", "disable_progress_bar", "enable_progress_bar"),
            ("datasets", "is_progress_bar_enabled", "disable_progress_bars", "enable_progress_bars"),
            ("huggingface_hub.utils", "are_progress_bars_disabled", "disable_progress_bars", "enable_progress_bars")):
        lib = sys.modules.get(module)
        if lib is None:
            continue
        try:
            was_on = getattr(lib, enabled)()
            if enabled.startswith("are_"):
                was_on = not was_on
            if was_on:
                getattr(lib, off)()
                switches.append(getattr(lib, on))
        except Exception:  # noqa: BLE001 - another release without the switch: its bars stay
            continue
    # a disabled bar is still a tqdm object, and tqdm starts its monitor thread on the first one (in __new__)
    bars = sys.modules.get("tqdm.std")
    interval = getattr(getattr(bars, "tqdm", None), "monitor_interval", None)
    if interval is not None:
        bars.tqdm.monitor_interval = 0
    try:
        yield
    finally:
        if interval is not None:
            bars.tqdm.monitor_interval = interval
        for enable in switches:
            enable()
