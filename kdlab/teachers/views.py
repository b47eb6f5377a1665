"""``teacher.mode: views``: the teacher's outputs for K fixed, seeded augmented views of every training row,
computed once, stored on disk in float16 (optionally only the top-k logits) keyed by row index and view, and
replayed during training: each epoch a row shows one of its K views (picked by the run's seed) and the loss gets
exactly the logits the teacher gave that view.

The views are augmented with ``data.seed`` (fixed across a study's trials), so every trial and every worker
process of a study reads the same files: the teacher's cost is paid once. The folder is
``$KDLAB_CACHE_DIR/views/<fingerprint>/`` (:mod:`kdlab.arrays`), named by the teacher, the data and its
augmentation, K, top-k and the rows; like the outputs cache, each array's checksum is kept beside it and a damaged
folder is removed with a warning and computed again."""

from __future__ import annotations

from typing import Any

import torch

from kdlab import batch, paths
from kdlab.arrays import ArrayWriter, open_arrays
from kdlab.arrays import problem as arrays_problem
from kdlab.augment import Augment
from kdlab.config import LoaderConfig
from kdlab.contracts import Part, check_logits, forward_of, rows_of, who
from kdlab.files import digest
from kdlab.loading import Loader, Rows, ViewTable, channels_last, streamed
from kdlab.session import CACHE_VERSION
from kdlab.teachers.cache import _damaged
from kdlab.training import autocast_for


def views_key(teacher_fp: str, augment: Augment, count: int, topk: int | None, seed: int, rows: list[int]) -> str:
    """The identity of a set of views: teacher, augmentation, K, top-k, seed and the rows (split sizes)."""
    return digest({"v": CACHE_VERSION, "teacher": teacher_fp, "augment": augment.spec(), "views": count,
                   "topk": topk, "seed": seed, "rows": rows})


def compact(logits: torch.Tensor, topk: int | None) -> dict[str, torch.Tensor]:
    """What is stored of a batch of logits: all of them, or the top-k values and classes and a fill logit for the
    other classes that gives them, evenly, the probability they had together."""
    if topk is None or topk >= logits.shape[1]:
        return {"logits": logits}
    logits = logits.float()
    values, indices = logits.topk(topk, dim=1)
    lse = logits.logsumexp(1)
    rest = (1 - (values.logsumexp(1) - lse).exp()).clamp_min(1e-12)
    fill = lse + torch.log(rest / (logits.shape[1] - topk))
    return {"values": values, "indices": indices.to(torch.int32), "fill": torch.minimum(fill, values[:, -1])}


def teacher_views(teacher: torch.nn.Module, x: Any, augment: Augment, *, key: str, count: int, topk: int | None,
                  seed: int, num_classes: int, device: torch.device, batch_size: int = 512,
                  loader: LoaderConfig | None = None, precision: str = "fp32",
                  channels_last_: bool = False, component: Any = None) -> ViewTable:
    """The :class:`ViewTable` of ``teacher`` over the training rows ``x`` (tensors or streamed rows): read from
    the cache folder ``key``, or computed now (view by view, the rows in order, each augmented with ``seed``, the
    row's index and the view number, exactly as training replays it) and stored."""
    folder = paths.cache_dir("views") / key
    n = len(x) if streamed(x) else batch.rows(x)
    damage = arrays_problem(folder)
    if damage is not None:
        _damaged("teacher views", folder, damage)
    arrays = open_arrays(folder)
    if arrays is None:
        k = topk if topk is not None and topk < num_classes else None
        shapes = ({"logits": ((n, count, num_classes), "float16")} if k is None else
                  {"values": ((n, count, k), "float16"), "indices": ((n, count, k), "int32"),
                   "fill": ((n, count), "float16")})
        writer = ArrayWriter(folder, shapes, {"views": count, "topk": k, "seed": seed, "rows": n})
        autocast = autocast_for(precision, device)
        name_of = who("teacher", component)
        try:
            with forward_of(Part(teacher, "teacher", component)):
                for view in range(count):
                    for index, xb in _view_batches(x, n, augment, view, seed, batch_size, device, loader):
                        if channels_last_:
                            xb = channels_last(xb)
                        with torch.inference_mode(), autocast:
                            logits = batch.forward(teacher, xb)
                        check_logits(logits, rows_of(xb), num_classes, name_of, f"over augmented view {view}")
                        for name, value in compact(logits.float(), k).items():
                            writer.write(name, (index, view), value)
        except BaseException:
            writer.abort()
            raise
        writer.commit()
        arrays = open_arrays(folder)
    table = ViewTable(arrays, num_classes, count, seed)
    # rows in memory are augmented on the device: keep their views there too (float16, gathered per batch)
    return table if streamed(x) else table.to(device)


def _view_batches(x: Any, n: int, augment: Augment, view: int, seed: int, batch_size: int, device: torch.device,
                  loader: LoaderConfig | None):
    """``(row indices as a numpy-friendly slice or list, augmented inputs on the device)`` for one view."""
    if not streamed(x):
        for i in range(0, n, batch_size):
            index = torch.arange(i, min(i + batch_size, n), device=device)
            xb = batch.to(batch.index(x, slice(i, i + batch_size)), device)
            xb, _, _ = augment.train(xb, None, index, seed=seed, counter=view)
            yield slice(i, i + len(index)), xb
        return
    rows = x if isinstance(x, Rows) else Rows([x])
    reader = Loader(rows, None, batch_size, loader or LoaderConfig(), device, augment=augment, train=True, seed=seed)
    try:
        for xb, _, index, _, _ in reader.batches(epoch=view):
            yield index.numpy(), xb
    finally:
        reader.close()
