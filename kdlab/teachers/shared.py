"""Teachers shared through the tracking store, for studies on many machines that share no disk.

A teacher trained by kdlab is published as artifacts of its MLflow run (tag ``kdlab.teacher_fingerprint``): its
weights (``teacher/state_dict.pt``) and its outputs over the data (``teacher_outputs/<fingerprint>.pt`` with its
checksum file ``<fingerprint>.json``, as in the local cache; streamed data's outputs are not shared). Any
process that needs the teacher looks for a finished run with its fingerprint in the experiment and downloads what
its local cache lacks. Training and computing the outputs happen under a lock of the study's storage
(``Session.locks``: ``teacher:<fingerprint>``, ``outputs:<fingerprint>``), so exactly one process does each while
the others wait for it and then download; if that process dies, its lock is released and the next one takes over.
"""

from __future__ import annotations

import logging
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from kdlab.session import Session
from kdlab.tracking import Tracker

log = logging.getLogger("kdlab")
T = TypeVar("T")

#: where a teacher run keeps what other machines fetch
WEIGHTS = "teacher/state_dict.pt"
OUTPUTS = "teacher_outputs"
FINGERPRINT_TAG = "kdlab.teacher_fingerprint"


def find_teacher_run(tracker: Tracker, fp: str) -> Any | None:
    """The first finished teacher run with fingerprint ``fp`` in the tracker's experiment (its weights were logged
    before it ended), or ``None``."""
    runs = tracker.search_runs(f"tags.{FINGERPRINT_TAG} = '{fp}' and attributes.status = 'FINISHED'",
                               order_by=["attributes.start_time ASC"], max_results=5)
    return runs[0] if runs else None


@contextmanager
def claim(session: Session, key: str, what: str) -> Iterator[bool]:
    """Hold the study's lock ``key`` (blocking while another process holds it: it is training); yields whether a
    lock was taken (``False`` outside a study, where nothing is shared)."""
    locks = getattr(session, "locks", None)
    if locks is None:
        yield False
        return
    with locks.hold(key, timeout=None, waiting=f"waiting for another process to finish {what}"):
        yield True


def end_orphans(tracker: Tracker, fp: str) -> None:
    """Teacher runs with fingerprint ``fp`` left ``RUNNING`` by a trainer that died; the caller holds the teacher's
    lock, so no live process is training it."""
    for run in tracker.search_runs(f"tags.{FINGERPRINT_TAG} = '{fp}' and attributes.status = 'RUNNING'"):
        handle = tracker.run(run.info.run_id)
        handle.set_tags({"kdlab.fail_reason": "its trainer died before it ended; trained again by another process"})
        handle.end("FAILED")


def fetch_weights(tracker: Tracker, run_id: str) -> Path:
    """The teacher's weights file from its run's artifacts (downloaded to a temporary folder)."""
    return tracker.download(run_id, WEIGHTS)


def _artifacts(path: Path) -> tuple[str, str]:
    """The artifact paths of a cached outputs file and of its checksum file (``<name>.json``, read last)."""
    return f"{OUTPUTS}/{path.name}", f"{OUTPUTS}/{path.with_suffix('.json').name}"


def fetch_outputs(tracker: Tracker, run_id: str, path: Path) -> bool:
    """Download the teacher's outputs into the local cache file ``path``; ``False`` when the run has none. The
    checksum file is written last, so that a download cut short is no cache entry; the cache checks the file against
    it when it reads it (a damaged download is removed and computed here)."""
    data_art, meta_art = _artifacts(path)
    present = {a.path for a in tracker.list_artifacts(run_id, OUTPUTS)}
    if data_art not in present or meta_art not in present:
        return False
    for art, target in ((data_art, path), (meta_art, path.with_suffix(".json"))):
        local = tracker.download(run_id, art)
        tmp = target.with_name(f"{target.name}.download.tmp")
        shutil.copyfile(local, tmp)
        tmp.replace(target)
    return True


def publish_outputs(tracker: Tracker, run_id: str, path: Path) -> None:
    run = tracker.run(run_id)
    run.log_artifact(path, OUTPUTS)
    run.log_artifact(path.with_suffix(".json"), OUTPUTS)


def shared_outputs(teacher: Any, path: Path, session: Session, tracker: Tracker | None, compute: Callable[[], T]) -> T:
    """The teacher's outputs: from the local cache file ``path``, else downloaded from the teacher's run, else
    computed (by one process, under the lock ``outputs:<path's name>``) and published on it. ``compute()`` is
    :func:`kdlab.teachers.cache.teacher_outputs` for that file (it reads and fills the local cache)."""
    shareable = tracker is not None and teacher.run_id and teacher.source in ("trained", "cache", "shared")
    if path.exists() or not shareable:
        return compute()
    if fetch_outputs(tracker, teacher.run_id, path):
        log.info("teacher outputs %s downloaded from run %s", path.name, teacher.run_id)
        return compute()
    with claim(session, f"outputs:{path.stem}", "the teacher's outputs"):
        if fetch_outputs(tracker, teacher.run_id, path):
            return compute()
        outputs = compute()
        publish_outputs(tracker, teacher.run_id, path)
        return outputs
