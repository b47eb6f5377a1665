"""Tensor functions for loss authors (public API)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab import batch
from kdlab.batch import Inputs
from kdlab.types import UNLABELED


def masked_cross_entropy(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy over the labelled rows (``labels != -1``); 0 (with a gradient path) when none are."""
    # one fused kernel skips the unlabelled rows (ignore_index); fewer ops than masking per-row losses, which
    # matters in the step loop of small models
    total = F.cross_entropy(logits, labels, ignore_index=UNLABELED, reduction="sum", label_smoothing=label_smoothing)
    return total / (labels != UNLABELED).sum().clamp_min(1)


def soft_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, averaged over the batch (Hinton et al. 2015)."""
    t = temperature
    log_p_s = F.log_softmax(student_logits / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.to(log_p_s.dtype) / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean") * (t * t)


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    return (logits.argmax(1) == labels).float().mean()


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


__all__ = ["masked_cross_entropy", "soft_kl", "accuracy", "layer_outputs", "torch"]
