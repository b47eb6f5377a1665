"""Nothing lost when a run cannot be recorded: if the tracking store fails after a run has trained (its final
metrics are known), the model's weights, the metrics and the config are written under
``$KDLAB_HOME/unrecorded/<time>-<run name>/`` and the error says where."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from torch import nn

from kdlab import paths
from kdlab.config import dump_yaml
from kdlab.files import atomic_torch_save, atomic_write_text
from kdlab.tracking import TrackingError
from kdlab.weights import state_dict_cpu


class Unrecorded:
    """``with Unrecorded(name, config), tracked_run(...) as live:`` then ``keep.watch(live, model)``: a
    :class:`TrackingError` leaving the block after the run reported its final metrics is raised again naming the
    folder its model, metrics and config were saved to."""

    def __init__(self, name: str, config: dict[str, Any]):
        self.name = name
        self.config = config
        self.live: Any = None
        self.model: nn.Module | None = None

    def watch(self, live: Any, model: nn.Module) -> None:
        self.live, self.model = live, model

    def __enter__(self) -> Unrecorded:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        if not isinstance(exc, TrackingError) or self.live is None or not self.live.metrics or self.model is None:
            return
        try:
            folder = save_unrecorded(self.name, self.model, self.live.metrics, self.config)
        except Exception:  # noqa: BLE001 - the tracking error is the one to report
            return
        raise TrackingError(f"{exc} — the run could not be recorded; its model, metrics and config were saved in "
                            f"{folder} (state_dict.pt, metrics.json, config.yaml)") from exc


def save_unrecorded(name: str, model: nn.Module, metrics: dict[str, float], config: dict[str, Any]) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80]
    folder = paths.home() / "unrecorded" / f"{time.strftime('%Y%m%d-%H%M%S')}-{safe}"
    atomic_torch_save(state_dict_cpu(model), folder / "state_dict.pt")
    atomic_write_text(folder / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True))
    atomic_write_text(folder / "config.yaml", dump_yaml(config))
    return folder
