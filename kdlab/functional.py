"""Tensor functions for loss authors (public API)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab import batch
from kdlab.batch import Inputs
from kdlab.types import UNLABELED

try:
    from torch._C._functorch import is_batchedtensor as _is_batched
except ImportError:  # pragma: no cover - other torch versions
    def _is_batched(t: Tensor) -> bool:
        return False


def masked_cross_entropy(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0,
                         soft_labels: Tensor | None = None) -> Tensor:
    """Mean cross-entropy over the labelled rows (``labels != -1``); 0 (with a gradient path) when none are.

    With ``soft_labels`` (``(N, num_classes)`` target distributions, :attr:`kdlab.LossInputs.soft_labels` under
    mixup/cutmix) the targets are those distributions instead of the labels (smoothed by ``label_smoothing``)."""
    if soft_labels is not None:
        target = soft_labels.to(logits.dtype)
        if label_smoothing:
            target = target * (1 - label_smoothing) + label_smoothing / logits.shape[1]
        per_row = -(target * F.log_softmax(logits, dim=1)).sum(1)
        mask = labels != UNLABELED
        return (per_row * mask).sum() / mask.sum().clamp_min(1)
    if _is_batched(logits) and not label_smoothing:
        # under vmap (stacked trials, kdlab.stacking) cross_entropy's nll_loss runs as a Python decomposition;
        # log_softmax and gather have C++ batching rules (the same value; faster there, slower alone)
        labeled = labels != UNLABELED
        picked = F.log_softmax(logits, 1).gather(1, labels.clamp_min(0)[:, None]).squeeze(1)
        return -torch.where(labeled, picked, 0.0).sum() / labeled.sum().clamp_min(1)
    # one fused kernel skips the unlabelled rows (ignore_index); fewer ops than masking per-row losses, which
    # matters in the step loop of small models
    total = F.cross_entropy(logits, labels, ignore_index=UNLABELED, reduction="sum", label_smoothing=label_smoothing)
    return total / (labels != UNLABELED).sum().clamp_min(1)


def soft_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float | Tensor) -> Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, averaged over the batch (Hinton et al. 2015). ``temperature`` may
    be a tensor (a stackable loss's buffer)."""
    t = temperature
    log_p_s = F.log_softmax(student_logits / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.to(log_p_s.dtype) / t, dim=1)
    # kl_div(log_target=True, reduction="batchmean") written out: the same value and speed, and torch.func.vmap has
    # a batching rule for each of these ops (none for kl_div: it would loop over the members of a stack)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum() / student_logits.shape[0] * (t * t)


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Top-1 accuracy as a float32 tensor (for losses and on-device arithmetic). Metrics that are reported use
    :func:`count_correct` and divide exactly: a float32 mean of 941 hits in 1000 is 0.9409999847..., not 0.941."""
    return (logits.argmax(1) == labels).float().mean()


def count_correct(logits: Tensor, labels: Tensor) -> Tensor:
    """The number of rows whose top-1 prediction is the label (an int64 scalar tensor, on the logits' device)."""
    return (logits.argmax(1) == labels).sum()


@torch.no_grad()
def layer_outputs(model: torch.nn.Module, x: Inputs, layers: tuple[str, ...] | list[str], *,
                  owner: str = "the model", key: str = "loss.params") -> dict[str, Tensor]:
    """Outputs of the modules at dotted paths ``layers`` for one forward pass of ``model`` over ``x`` (no grad,
    model mode unchanged), e.g. to size an adapter in :meth:`kdlab.Loss.setup`. A path that does not exist raises
    :class:`kdlab.KdlabError` naming ``key`` and listing the model's module names."""
    from kdlab.capture import FeatureCapture

    capture = FeatureCapture(model, tuple(layers), key=key, owner=owner)
    try:
        batch.forward(model, x)
        return capture.take()
    finally:
        capture.close()


__all__ = ["masked_cross_entropy", "soft_kl", "accuracy", "count_correct", "layer_outputs", "torch"]
