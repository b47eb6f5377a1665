"""Extra teachers for multi-teacher losses: each is a ``teacher:`` section of its own, handled exactly like the
configured teacher (loaded from a checkpoint or MLflow, or trained once, tracked, cached and reused)."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from kdlab.config import LoadedConfig, Source, dump_yaml, load_config
from kdlab.types import Data

#: sections of a run config that describe a chain or a schedule, not one run; dropped from derived configs
_COMPOUND = ("study", "assistant", "continual")


def derive_config(loaded: LoadedConfig, changes: dict[str, Any], label: str) -> LoadedConfig:
    """``loaded`` with top-level sections replaced by ``changes`` (``None`` removes one), validated again; errors
    name ``label`` (e.g. ``run.yaml (loss.params.teachers.1)``)."""
    data = {k: v for k, v in loaded.config.resolved_dict().items() if k not in _COMPOUND}
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return load_config(Source(label, dump_yaml(data)))


def teacher_builder(loaded: LoadedConfig, data: Data, device: torch.device, session: Any, *, track: bool,
                    reporter: Any) -> Callable[[dict[str, Any]], nn.Module]:
    """The ``build_teacher`` callback of :class:`kdlab.LossSetup`."""
    count = [0]

    def build(spec: dict[str, Any]) -> nn.Module:
        from kdlab.engine import get_teacher

        label = f"{loaded.name} (loss.params.teachers.{count[0]}, as a teacher section)"
        count[0] += 1
        derived = derive_config(loaded, {"teacher": dict(spec)}, label)
        return get_teacher(derived, data, device, session, track=track, reporter=reporter).model

    return build
