"""Seeded augmentation of training batches (``data.augment``).

Every random choice is made per example from a counter-based hash of ``(seed, example index, counter, op)``, where
the counter is the epoch (a live run) or the view number (``teacher.mode: views``). Nothing is drawn from a random
number generator's state, so the same example gets the same crop, flip or policy whether it is augmented in a batch
on the GPU, in a DataLoader worker process, alone or beside other examples, in this run or the next: a streamed
run and an in-memory run make the same choices, and a view can be rebuilt exactly when its cached teacher outputs
are replayed. torchvision applies one random choice to a whole batched tensor; here each row has its own.

Ops apply to floating-point inputs with spatial dimensions (images ``(N, C, H, W)``, signals ``(N, C, L)`` or
``(N, L)``); integer inputs (token ids, masks) pass through untouched. ``normalize`` is deterministic and is also
applied to evaluation data; the other ops only to training batches. ``mixup`` and ``cutmix`` mix the examples of a
batch (they come last) and give soft labels (:attr:`kdlab.LossInputs.soft_labels`).
"""

from __future__ import annotations

import math
import random
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab import batch
from kdlab.batch import Inputs
from kdlab.config import BATCH_OPS
from kdlab.errors import KdlabError
from kdlab.types import UNLABELED

MASK = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9


def _mul(x: Any, c: int) -> Any:
    """``x * c mod 2**32`` for ``x`` in ``[0, 2**32)`` (a Python int or an int64 tensor), in two 16-bit halves so
    that no intermediate leaves int64 on any device."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & MASK


def hash32(x: Any) -> Any:
    """A 32-bit integer hash (Wellons' lowbias32) of ``x`` in ``[0, 2**32)``: Python int or int64 tensor alike."""
    x = x ^ (x >> 16)
    x = _mul(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul(x, 0x846CA68B)
    return x ^ (x >> 16)


def keys(seed: int, index: Tensor, counter: Tensor | int, stream: int) -> Tensor:
    """One 32-bit key per example (int64 tensor) from the seed, the example's index, the counter (epoch or view;
    an int or a tensor of one per example) and the stream (the op's position)."""
    base = hash32((hash32(seed & MASK) ^ _mul(stream + 1, _GOLDEN)) & MASK)
    h = hash32((index.to(torch.int64) & MASK) ^ base)
    if isinstance(counter, Tensor):
        return hash32(h ^ hash32(counter.to(h.device, torch.int64) & MASK))
    return hash32(h ^ hash32(int(counter) & MASK))


def uniform(key: Tensor, draw: int) -> Tensor:
    """The ``draw``-th uniform number in ``[0, 1)`` of each key (float32, exact: 24 random bits)."""
    return (hash32(key ^ hash32(_mul(draw + 1, _GOLDEN))) >> 8).to(torch.float32) * (1.0 / (1 << 24))


def _spatial(t: Tensor) -> bool:
    return t.is_floating_point() and t.ndim >= 2


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.ndim - 1)))


# ----------------------------------------------------------------------------------------------------------------
# Per-example ops: op(x, key_fn) -> x, with key_fn(draw) -> (N,) uniforms
# ----------------------------------------------------------------------------------------------------------------


def random_crop(x: Tensor, u, padding: int, padding_mode: str, fill: float) -> Tensor:
    if padding == 0:
        return x
    flat = x.ndim == 2  # (N, L): one channel
    if flat:
        x = x.unsqueeze(1)
    p = padding
    mode = "constant" if padding_mode == "constant" else padding_mode
    pads = (p, p) * (x.ndim - 2)
    xp = F.pad(x, pads, mode=mode, value=fill) if mode == "constant" else F.pad(x, pads, mode=mode)
    n = x.shape[0]
    out = xp
    # the last spatial dims, one offset each: gather a window of the input's length along each
    for d, draw in zip(range(2, x.ndim), range(x.ndim - 2)):
        size = x.shape[d]
        off = (u(draw) * (2 * p + 1)).long().clamp_(max=2 * p)
        pos = off.view(n, 1) + torch.arange(size, device=x.device)  # (N, size)
        shape = [n] + [1] * (x.ndim - 1)
        shape[d] = size
        idx = pos.view(shape).expand(*out.shape[:d], size, *out.shape[d + 1:])
        out = out.gather(d, idx)
    return out.squeeze(1) if flat else out


def hflip(x: Tensor, u, p: float) -> Tensor:
    flip = u(0) < p
    return torch.where(_bcast(flip, x), x.flip(-1), x)


def random_resized_crop(x: Tensor, u, scale: tuple[float, float], ratio: tuple[float, float]) -> Tensor:
    if x.ndim != 4:
        raise KdlabError("data.augment: random_resized_crop needs images (N, C, H, W)")
    n, _, h, w = x.shape
    area = (scale[0] + u(0) * (scale[1] - scale[0])) * (h * w)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    r = torch.exp(log_lo + u(1) * (log_hi - log_lo))
    cw = (torch.sqrt(area * r) / w).clamp(max=1.0)  # crop width and height as shares of the image's
    ch = (torch.sqrt(area / r) / h).clamp(max=1.0)
    cx = cw / 2 + u(2) * (1 - cw)
    cy = ch / 2 + u(3) * (1 - ch)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = cw.to(x.dtype), (2 * cx - 1).to(x.dtype)
    theta[:, 1, 1], theta[:, 1, 2] = ch.to(x.dtype), (2 * cy - 1).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _policy(x: Tensor, key: Tensor, make) -> Tensor:
    """A torchvision v2 policy applied to each example on its own, torch's CPU generator seeded from the example's
    key (torchvision draws its choices there whatever the tensor's device)."""
    if x.ndim != 4:
        raise KdlabError("data.augment: randaugment and autoaugment need images (N, C, H, W)")
    tf = make()
    out = torch.empty_like(x)
    for i, k in enumerate(key.tolist()):
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(k)  # the CPU generator only
            out[i] = tf(x[i])
    return out


def _torchvision_v2():
    try:
        from torchvision.transforms import v2
    except Exception as exc:  # noqa: BLE001 - missing, or built for another torch
        raise KdlabError(f"data.augment: randaugment/autoaugment need torchvision: pip install 'kdlab[vision]' "
                         f"({type(exc).__name__}: {exc})") from None
    return v2


# ----------------------------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------------------------


class Augment:
    """The ops of ``data.augment`` for data with ``num_classes`` classes.

    :meth:`train` augments a training batch; :meth:`eval` applies the deterministic ops (``normalize``) to any
    batch. Both take one tensor or named tensors and return the same form.
    """

    def __init__(self, ops: Sequence[Any], num_classes: int):
        self.ops = list(ops)
        self.num_classes = num_classes
        self._consts: dict[tuple[int, str], tuple[Tensor, Tensor]] = {}

    @property
    def random(self) -> bool:
        """Whether any op is random (training batches then differ from the fixed rows)."""
        return any(op.op != "normalize" for op in self.ops)

    @property
    def mixes(self) -> bool:
        """Whether an op mixes the examples of a batch (mixup, cutmix): labels become soft."""
        return any(op.op in BATCH_OPS for op in self.ops)

    def spec(self) -> list[dict[str, Any]]:
        """The ops as JSON (for fingerprints)."""
        return [op.model_dump(mode="json") for op in self.ops]

    def check(self, x: Inputs) -> None:
        """Raise a :class:`KdlabError` naming ``data.augment`` when the ops cannot apply to inputs like ``x`` (a
        batch)."""
        named = batch.tensors(x)
        spatial = {k: t for k, t in named.items() if _spatial(t)}
        if not spatial:
            raise KdlabError("data.augment: the data has no floating-point inputs with spatial dimensions to augment "
                             f"(inputs: {', '.join(f'{k} {tuple(t.shape[1:])}' for k, t in named.items())})")
        for op in self.ops:
            if op.op in ("random_resized_crop", "randaugment", "autoaugment") and any(
                    t.ndim != 4 for t in spatial.values()):
                raise KdlabError(f"data.augment: {op.op} needs images (N, C, H, W); the inputs are "
                                 + ", ".join(f"{k} {tuple(t.shape[1:])}" for k, t in spatial.items()))
            if op.op == "normalize":
                for k, t in spatial.items():
                    c = t.shape[1] if t.ndim > 2 else 1
                    if len(op.mean) not in (1, c) or len(op.std) not in (1, c):
                        raise KdlabError(f"data.augment: normalize has {len(op.mean)} means and {len(op.std)} stds "
                                         f"for inputs {k!r} with {c} channel(s)")
                    if any(s <= 0 for s in op.std):
                        raise KdlabError("data.augment: normalize needs every std > 0")
            if op.op in BATCH_OPS and len(spatial) != len(named):
                raise KdlabError(f"data.augment: {op.op} mixes inputs, but "
                                 f"{', '.join(k for k in named if k not in spatial)} cannot be mixed")

    def eval(self, x: Inputs) -> Inputs:
        """The deterministic ops (``normalize``), in order; ``x`` unchanged when there are none."""
        for op in self.ops:
            if op.op == "normalize":
                x = self._map(x, lambda t, op=op: self._normalize(t, op))
        return x

    def train(self, x: Inputs, labels: Tensor, index: Tensor, *, seed: int, counter: Tensor | int,
              first: int = 0) -> tuple[Inputs, Tensor, Tensor | None]:
        """A training batch augmented: returns ``(x, labels, soft_labels)``; ``soft_labels`` is ``None`` unless a
        batch op mixed the examples (then rows mixed with an unlabeled row become unlabeled).

        ``index`` holds the examples' indices, ``counter`` the epoch or each example's view, ``first`` the index of
        the batch's first example as an int (batch ops draw their one choice per batch from it)."""
        soft = None
        for pos, op in enumerate(self.ops):
            if op.op == "normalize":
                x = self._map(x, lambda t, op=op: self._normalize(t, op))
            elif op.op in BATCH_OPS:
                if isinstance(counter, Tensor):
                    raise KdlabError(f"data.augment: {op.op} cannot be replayed per view (teacher.mode: views)")
                x, labels, soft = self._mix(x, labels, op, seed, first, counter, pos)
            else:
                k = keys(seed, index, counter, pos)
                if k.device != index.device:
                    k = k.to(index.device)
                x = self._map(x, lambda t, op=op, k=k: self._per_example(t, op, k))
        return x, labels, soft

    # -- helpers ---------------------------------------------------------------------------------------------

    @staticmethod
    def _map(x: Inputs, fn) -> Inputs:
        if isinstance(x, Tensor):
            return fn(x) if _spatial(x) else x
        return {k: fn(v) if _spatial(v) else v for k, v in x.items()}

    def _normalize(self, t: Tensor, op: Any) -> Tensor:
        key = (id(op), f"{t.device}:{t.dtype}")
        if key not in self._consts:
            shape = (1, -1) + (1,) * (t.ndim - 2) if t.ndim > 2 else (1, 1)
            self._consts[key] = (torch.tensor(op.mean, dtype=t.dtype, device=t.device).view(shape),
                                 torch.tensor(op.std, dtype=t.dtype, device=t.device).view(shape))
        mean, std = self._consts[key]
        return (t - mean) / std

    def _per_example(self, t: Tensor, op: Any, key: Tensor) -> Tensor:
        def u(draw: int) -> Tensor:
            return uniform(key, draw).to(t.device)

        if op.op == "random_crop":
            return random_crop(t, u, op.padding, op.padding_mode, op.fill)
        if op.op == "hflip":
            return hflip(t, u, op.p)
        if op.op == "random_resized_crop":
            return random_resized_crop(t, u, tuple(op.scale), tuple(op.ratio))
        if op.op == "randaugment":
            v2 = _torchvision_v2()
            return _policy(t, key, lambda: v2.RandAugment(op.num_ops, op.magnitude, op.num_magnitude_bins))
        if op.op == "autoaugment":
            v2 = _torchvision_v2()
            policy = {"imagenet": v2.AutoAugmentPolicy.IMAGENET, "cifar10": v2.AutoAugmentPolicy.CIFAR10,
                      "svhn": v2.AutoAugmentPolicy.SVHN}[op.policy]
            return _policy(t, key, lambda: v2.AutoAugment(policy))
        raise KdlabError(f"data.augment: unknown op {op.op!r}")  # pragma: no cover - the config model forbids it

    def _mix(self, x: Inputs, labels: Tensor, op: Any, seed: int, first: int, counter: int,
             pos: int) -> tuple[Inputs, Tensor, Tensor]:
        """mixup or cutmix of each example with the one before it in the batch, one choice per batch."""
        rng = random.Random(hash32(hash32((seed ^ _mul(pos + 1, _GOLDEN)) & MASK) ^ (first & MASK))
                            ^ hash32(counter & MASK))
        lam = rng.betavariate(op.alpha, op.alpha)
        if op.op == "mixup":
            x = self._map(x, lambda t: t * lam + t.roll(1, 0) * (1 - lam))
        else:
            shape = next(t.shape for t in batch.tensors(x).values() if _spatial(t))
            h, w = (shape[-2], shape[-1]) if len(shape) >= 4 else (1, shape[-1])
            cut = math.sqrt(1 - lam)
            ch, cw = int(h * cut), int(w * cut)
            cy, cx = rng.randrange(h), rng.randrange(w)
            y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
            x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
            lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)

            def paste(t: Tensor) -> Tensor:
                t = t.clone()
                other = t.roll(1, 0)
                if t.ndim >= 4:
                    t[..., y0:y1, x0:x1] = other[..., y0:y1, x0:x1]
                else:
                    t[..., x0:x1] = other[..., x0:x1]
                return t

            x = self._map(x, paste)
        other = labels.roll(1, 0)
        both = (labels != UNLABELED) & (other != UNLABELED)
        n = self.num_classes
        soft = (F.one_hot(labels.clamp(min=0), n).to(torch.float32) * lam
                + F.one_hot(other.clamp(min=0), n).to(torch.float32) * (1 - lam)) * both.unsqueeze(1)
        return x, torch.where(both, labels, torch.full_like(labels, UNLABELED)), soft


def view_of(seed: int, index: Tensor, epoch: int, views: int) -> Tensor:
    """Which of ``views`` cached views each example shows in ``epoch`` (int64, on ``index``'s device)."""
    return keys(seed, index, epoch, -1) % views
