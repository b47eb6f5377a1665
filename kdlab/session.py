"""What the runs of one process share: the data, teachers and their outputs (by fingerprint), trackers per MLflow
experiment, the training rows built for a device, and the session's lifecycle observers (a progress display).

A study's main process prepares a session (data, teacher, teacher outputs) and its forked workers inherit it; in a
study the session also carries the study's storage locks (one process trains a teacher)."""

from __future__ import annotations

from typing import Any

import torch

from kdlab.config import LoadedConfig
from kdlab.contracts import check_data
from kdlab.errors import PluginError
from kdlab.files import code_digest, digest
from kdlab.tracking import Tracker
from kdlab.types import Data

#: bumped when the meaning of cached data, teachers or teacher outputs changes
CACHE_VERSION = 2


def data_fingerprint(loaded: LoadedConfig) -> str:
    """The data's identity: its component, params, seed and the plugin's distribution, version and code."""
    comp = loaded.components["data"]
    cfg = loaded.config.data
    return digest({"v": CACHE_VERSION, "name": cfg.name, "params": cfg.params, "seed": cfg.seed,
                   "plugin": comp.distribution, "version": comp.version, "code": code_digest(comp.factory)})


class Session:
    """Caches shared by the runs of one process."""

    def __init__(self, observers: list[Any] | tuple[Any, ...] = ()) -> None:
        self.data: dict[str, Data] = {}
        self.teachers: dict[str, Any] = {}  # fingerprint -> kdlab.teachers.Teacher
        self.outputs: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        #: the teacher's cached augmented views of the training rows (teacher.mode: views), by key and device
        self.views: dict[tuple[str, str], Any] = {}
        self.trackers: dict[tuple[str | None, str], Tracker] = {}
        #: training rows (train + transfer, with the teacher's logits) on a device, built once and shared by runs
        self.train_sets: dict[tuple, Any] = {}
        #: lifecycle observers of every run of this session (e.g. the command line's progress display)
        self.observers = list(observers)
        #: the locks shared by every process of a study (its storage's: ``locks.hold(key)``), set by the study
        #: runner; ``None`` outside a study. Teachers are trained under one, so that one process trains each.
        self.locks: Any = None

    def get_data(self, loaded: LoadedConfig) -> Data:
        fp = data_fingerprint(loaded)
        if fp not in self.data:
            comp = loaded.components["data"]
            data = comp.build(loaded.params["data"], seed=loaded.config.data.seed)
            if not isinstance(data, Data):
                raise PluginError(f"data {comp.name!r} from {comp.origin} returned {type(data).__name__}, "
                                  "expected kdlab.Data")
            check_data(data, comp)
            self.data[fp] = data
        return self.data[fp]

    def tracker(self, loaded: LoadedConfig) -> Tracker | None:
        """The tracker of the config's MLflow store and experiment, or ``None`` when tracking is off."""
        cfg = loaded.config.tracking
        if not cfg.enabled:
            return None
        name = cfg.experiment or f"kdlab-{loaded.config.data.name}"
        key = (cfg.uri, name)
        if key not in self.trackers:
            self.trackers[key] = Tracker(cfg.uri, name)
        return self.trackers[key]
