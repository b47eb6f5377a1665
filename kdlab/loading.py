"""How examples reach the model: in memory or streamed, augmented, with the teacher's outputs beside them.

Two forms of split inputs behind one contract (:class:`kdlab.Split`):

* **in memory** — one tensor or named tensors, on the run's device: an epoch is one permutation gather and
  contiguous slices (the fast path; no DataLoader, no copies);
* **streamed** — a map-style dataset (``len(ds)``, ``ds[i]`` -> one example; optionally ``ds.__getitems__(indices)``
  -> a list of examples) read lazily through a :class:`torch.utils.data.DataLoader` with worker processes and
  pinned memory, copied to the device without blocking.

Both feed the same batches in the same order for the same permutation (a streamed run and an in-memory run of the
same data and seed train alike), and both augment with :class:`kdlab.augment.Augment`: on the device for tensors in
memory, in the loader's workers for streamed data. A :class:`Feed` yields one :class:`Step` per training batch with
its labels, row indices and the teacher's outputs for those rows (cached, or the view replayed).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import Tensor

from kdlab import batch
from kdlab.augment import Augment, view_of
from kdlab.batch import Inputs
from kdlab.config import LoaderConfig


def streamed(x: Any) -> bool:
    """Whether split inputs ``x`` are a dataset read lazily (not a tensor or a dict of tensors)."""
    return not isinstance(x, (Tensor, dict))


def num_rows(x: Any) -> int:
    return len(x) if streamed(x) else batch.rows(x)


def stack(items: list[Any]) -> Inputs:
    """Examples (tensors, or dicts of named tensors) stacked into a batch."""
    if isinstance(items[0], Tensor):
        return torch.stack(items)
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def read(x: Any, indices: list[int]) -> Inputs:
    """The rows ``indices`` of split inputs ``x`` as a batch (read from a dataset, or gathered from tensors)."""
    if not streamed(x):
        return batch.index(x, torch.as_tensor(indices, dtype=torch.int64))
    if isinstance(x, Rows):
        return x.read(indices)
    getitems = getattr(x, "__getitems__", None)
    items = getitems(list(indices)) if getitems is not None else [x[i] for i in indices]
    return stack(list(items))


def head(x: Any, n: int) -> Inputs:
    """The first ``n`` rows (fewer when there are fewer) as a batch on the CPU or where they live."""
    n = min(n, num_rows(x))
    return read(x, list(range(n))) if streamed(x) else batch.index(x, slice(0, n))


class Rows:
    """Several parts of inputs (datasets or tensors) as one sequence of rows, the parts one after another: the
    training rows are the train split's and then the transfer split's."""

    def __init__(self, parts: list[Any]):
        self.parts = parts
        self.starts = [0]
        for p in parts:
            self.starts.append(self.starts[-1] + num_rows(p))

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, i: int) -> Any:
        p = bisect.bisect_right(self.starts, i) - 1
        part = self.parts[p]
        local = i - self.starts[p]
        return part[local] if streamed(part) else batch.index(part, local)

    def read(self, indices: list[int]) -> Inputs:
        if len(self.parts) == 1:
            return read(self.parts[0], indices)
        groups: dict[int, tuple[list[int], list[int]]] = {}
        for j, i in enumerate(indices):
            p = bisect.bisect_right(self.starts, i) - 1
            pos, local = groups.setdefault(p, ([], []))
            pos.append(j)
            local.append(i - self.starts[p])
        if len(groups) == 1:
            (p, (_, local)), = groups.items()
            return read(self.parts[p], local)
        order = [j for pos, _ in groups.values() for j in pos]
        joined = batch.cat([read(self.parts[p], local) for p, (_, local) in groups.items()])
        inverse = torch.empty(len(order), dtype=torch.int64)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        return batch.index(joined, inverse)


class Concat:
    """Tensors with the same trailing shape, indexed as one without copying them together (teacher outputs of the
    train and transfer rows, which may be memory-mapped files)."""

    def __init__(self, parts: list[Tensor]):
        self.parts = parts
        self.starts = [0]
        for p in parts:
            self.starts.append(self.starts[-1] + len(p))

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, index: Tensor) -> Tensor:
        if len(self.parts) == 1:
            return self.parts[0][index]
        bounds = torch.tensor(self.starts[1:-1], dtype=torch.int64)
        which = torch.bucketize(index, bounds, right=True)
        out = torch.empty((len(index), *self.parts[0].shape[1:]), dtype=self.parts[0].dtype)
        for p, part in enumerate(self.parts):
            sel = (which == p).nonzero().flatten()
            if len(sel):
                out[sel] = part[index[sel] - self.starts[p]]
        return out


# ----------------------------------------------------------------------------------------------------------------
# Teacher outputs for K seeded views per example
# ----------------------------------------------------------------------------------------------------------------


class ViewTable:
    """The teacher's logits for ``views`` augmented views of each training row: dense (``logits``: ``(N, K, C)``)
    or top-k (``values``/``indices``: ``(N, K, k)``, ``fill``: ``(N, K)``, the logit every other class gets so that
    the softmax keeps the mass the other classes had). Stored in float16; :meth:`gather` gives float32."""

    def __init__(self, arrays: dict[str, Tensor], num_classes: int, views: int, seed: int):
        self.arrays = arrays
        self.num_classes = num_classes
        self.views = views
        self.seed = seed  # the seed the views were augmented with

    @property
    def device(self) -> torch.device:
        return next(iter(self.arrays.values())).device

    def to(self, device: torch.device | str) -> ViewTable:
        return ViewTable({k: v.to(device) for k, v in self.arrays.items()}, self.num_classes, self.views, self.seed)

    def gather(self, index: Tensor, view: Tensor) -> Tensor:
        a = self.arrays
        if "logits" in a:
            return a["logits"][index, view].float()
        fill = a["fill"][index, view].float()
        out = fill.unsqueeze(1).expand(len(index), self.num_classes).clone()
        return out.scatter_(1, a["indices"][index, view].long(), a["values"][index, view].float())


# ----------------------------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Step:
    """One training batch on the device: inputs, labels (-1 unlabeled), the rows' indices, and when known the
    teacher's logits and features for exactly these (augmented) inputs, and soft labels (mixup, cutmix)."""

    x: Inputs
    y: Tensor
    index: Tensor
    teacher_logits: Tensor | None = None
    teacher_features: dict[str, Tensor] = field(default_factory=dict)
    soft_labels: Tensor | None = None


@dataclass
class Views:
    """Replay of cached views: the table, and the seed that picks each example's view per epoch."""

    table: ViewTable
    seed: int


def channels_last(x: Inputs) -> Inputs:
    def conv(t: Tensor) -> Tensor:
        return t.contiguous(memory_format=torch.channels_last) if t.ndim == 4 and t.is_floating_point() else t

    return conv(x) if isinstance(x, Tensor) else {k: conv(v) for k, v in x.items()}


class MemoryFeed:
    """Training rows held as tensors on the device: per epoch one gather by the permutation, then slices; the
    augmentation runs batched on the device."""

    def __init__(self, x: Inputs, y: Tensor, teacher_logits: Tensor | None, teacher_features: dict[str, Tensor],
                 batch_size: int, *, augment: Augment | None = None, seed: int = 0, views: Views | None = None,
                 channels_last: bool = False):
        self.x, self.y, self.t, self.tf = x, y, teacher_logits, teacher_features
        self.batch_size = batch_size
        self.augment = augment if augment is not None and augment.ops else None
        self.seed, self.views, self.cl = seed, views, channels_last

    def epoch(self, epoch: int, perm_cpu: Tensor, perm: Tensor, cached: bool) -> Iterator[Step]:
        bs, aug, views = self.batch_size, self.augment, self.views
        xs, ys = batch.index(self.x, perm), self.y[perm]
        ts = self.t[perm] if (cached and self.t is not None) else None
        tf = {k: v[perm] for k, v in self.tf.items()} if cached else {}
        mixes = aug is not None and aug.mixes
        for i in range(0, len(ys), bs):
            xb, yb, idx = batch.index(xs, slice(i, i + bs)), ys[i : i + bs], perm[i : i + bs]
            tb = None if ts is None else ts[i : i + bs]
            soft = None
            if aug is not None:
                if views is not None:
                    v = view_of(views.seed, idx, epoch, views.table.views)
                    xb, yb, soft = aug.train(xb, yb, idx, seed=views.table.seed, counter=v)
                    tb = views.table.gather(idx.to(views.table.device), v.to(views.table.device)).to(idx.device)
                elif aug.random:
                    xb, yb, soft = aug.train(xb, yb, idx, seed=self.seed, counter=epoch,
                                             first=int(perm_cpu[i]) if mixes else 0)
                else:
                    xb = aug.eval(xb)
            if self.cl:
                xb = channels_last(xb)
            yield Step(xb, yb, idx, tb, {k: v[i : i + bs] for k, v in tf.items()}, soft)

    def close(self) -> None:
        pass


class _Keys:
    """The loader's batch sampler: the batches of the current epoch's permutation, each as ``(epoch, indices)``
    (plain ints: they travel to the workers through a pipe)."""

    def __init__(self, n: int, batch_size: int):
        self.n, self.batch_size = n, batch_size
        self.epoch, self.perm = 0, torch.arange(n)

    def set(self, epoch: int, perm: Tensor) -> None:
        self.epoch, self.perm = epoch, perm

    def __iter__(self) -> Iterator[tuple[int, list[int]]]:
        for i in range(0, self.n, self.batch_size):
            yield self.epoch, self.perm[i : i + self.batch_size].tolist()

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)


class _Batches(torch.utils.data.Dataset):
    """What the loader's workers run: read a batch of rows, augment it (training) or transform it (evaluation)."""

    def __init__(self, rows: Rows, labels: Tensor | None, augment: Augment | None, *, train: bool, seed: int,
                 views: tuple[int, int, int] | None = None):
        self.rows, self.labels, self.augment = rows, labels, augment
        self.train, self.seed, self.views = train, seed, views  # views: (count, pick seed, augment seed)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Any:  # pragma: no cover - the loader asks for batches
        raise TypeError("read batches with __getitems__")

    def __getitems__(self, key: tuple[int, list[int]]) -> tuple[Any, ...]:
        epoch, indices = key
        x = self.rows.read(indices)
        index = torch.tensor(indices, dtype=torch.int64)
        y = None if self.labels is None else self.labels[index]
        soft = view = None
        aug = self.augment
        if aug is not None and aug.ops:
            if not self.train:
                x = aug.eval(x)
            elif self.views is not None:
                count, pick, seed = self.views
                view = view_of(pick, index, epoch, count)
                x, y, soft = aug.train(x, y, index, seed=seed, counter=view)
            elif aug.random:
                x, y, soft = aug.train(x, y, index, seed=self.seed, counter=epoch, first=indices[0])
            else:
                x = aug.eval(x)
        return x, y, index, soft, view


def _first(batch_: Any) -> Any:
    return batch_


class Loader:
    """A DataLoader over rows whose batches are chosen by :meth:`batches`' permutation; workers are started once
    and kept for every epoch (closed with :meth:`close`)."""

    def __init__(self, rows: Rows, labels: Tensor | None, batch_size: int, cfg: LoaderConfig, device: torch.device,
                 *, augment: Augment | None = None, train: bool = False, seed: int = 0,
                 views: tuple[int, int, int] | None = None):
        self.keys = _Keys(len(rows), batch_size)
        self.pin = cfg.pin_memory if cfg.pin_memory is not None else device.type == "cuda"
        self.device = device
        workers = cfg.workers
        self.loader = torch.utils.data.DataLoader(
            _Batches(rows, labels, augment, train=train, seed=seed, views=views), batch_sampler=self.keys,
            num_workers=workers, collate_fn=_first, pin_memory=self.pin,
            prefetch_factor=cfg.prefetch_factor if workers else None, persistent_workers=workers > 0)

    def batches(self, epoch: int = 0, perm: Tensor | None = None) -> Iterator[tuple[Any, ...]]:
        """``(x, y, index, soft, view)`` per batch, ``x``/``y``/``soft`` on the device (non-blocking from pinned
        memory); ``index`` and ``view`` stay on the CPU."""
        self.keys.set(epoch, perm if perm is not None else torch.arange(self.keys.n))
        nb = self.pin
        for x, y, index, soft, view in self.loader:
            yield (batch.to(x, self.device, non_blocking=nb), None if y is None else y.to(self.device, non_blocking=nb),
                   index, None if soft is None else soft.to(self.device, non_blocking=nb), view)

    def close(self) -> None:
        it = getattr(self.loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self.loader._iterator = None


class StreamFeed:
    """Training rows read lazily through a :class:`Loader` (augmented in its workers); the teacher's cached logits
    (CPU, possibly memory-mapped float16) or replayed views are gathered by row index in this process."""

    def __init__(self, rows: Rows, y: Tensor, teacher_logits: Any, batch_size: int, cfg: LoaderConfig,
                 device: torch.device, *, augment: Augment | None = None, seed: int = 0, views: Views | None = None,
                 channels_last: bool = False):
        self.t, self.views, self.cl, self.device = teacher_logits, views, channels_last, device
        augment = augment if augment is not None and augment.ops else None
        spec = (views.table.views, views.seed, views.table.seed) if views is not None else None
        self.loader = Loader(rows, y.cpu(), batch_size, cfg, device, augment=augment, train=True, seed=seed,
                             views=spec)

    def epoch(self, epoch: int, perm_cpu: Tensor, perm: Tensor, cached: bool) -> Iterator[Step]:
        nb = self.loader.pin
        for x, y, index, soft, view in self.loader.batches(epoch, perm_cpu):
            tb = None
            if self.views is not None:
                table = self.views.table
                tb = table.gather(index.to(table.device), view.to(table.device)).to(self.device, non_blocking=nb)
            elif cached and self.t is not None:
                tb = self.t[index].to(self.device, non_blocking=nb).float()
            if self.cl:
                x = channels_last(x)
            yield Step(x, y, index.to(self.device, non_blocking=nb), tb, {}, soft)

    def close(self) -> None:
        self.loader.close()


Feed = MemoryFeed | StreamFeed


class Evaluation:
    """The inputs ``x`` of a split in order, in batches on ``device``, with the deterministic ops of ``augment``
    applied (``normalize``), as often as :meth:`batches` is called; a streamed split keeps its loader's workers
    until :meth:`close` (validation every epoch starts them once)."""

    def __init__(self, x: Any, batch_size: int, device: torch.device, *, augment: Augment | None = None,
                 loader: LoaderConfig | None = None, channels_last: bool = False):
        self.x, self.batch_size, self.device, self.cl = x, batch_size, device, channels_last
        self.augment = augment if augment is not None and augment.ops else None
        self.reader = None
        if streamed(x):
            rows = x if isinstance(x, Rows) else Rows([x])
            self.reader = Loader(rows, None, batch_size, loader or LoaderConfig(), device, augment=self.augment)

    def batches(self) -> Iterator[Inputs]:
        if self.reader is not None:
            for xb, *_ in self.reader.batches():
                yield channels_last(xb) if self.cl else xb
            return
        x, aug = self.x, self.augment
        for i in range(0, batch.rows(x), self.batch_size):
            xb = batch.to(batch.index(x, slice(i, i + self.batch_size)), self.device)
            if aug is not None:
                xb = aug.eval(xb)
            yield channels_last(xb) if self.cl else xb

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()


def eval_batches(x: Any, batch_size: int, device: torch.device, **kwargs: Any) -> Iterator[Inputs]:
    """One pass of :class:`Evaluation` over ``x``."""
    ev = Evaluation(x, batch_size, device, **kwargs)
    try:
        yield from ev.batches()
    finally:
        ev.close()
