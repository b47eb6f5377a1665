"""What a model costs to run, beyond its parameter count: FLOPs per example (counted by torch's own
``torch.utils.flop_counter``) and measured latency on the run's device (the median of repeated forward passes).

Metric names (``kdlab.metrics.COSTS``): ``<role>_flops``, ``<role>_latency_ms`` (one example) and
``<role>_batch_latency_ms`` (a batch of :data:`LATENCY_BATCH` examples) for the student and the teacher."""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any

import torch
from torch import Tensor, nn

from kdlab import batch

log = logging.getLogger("kdlab")

#: the "large batch" of the batch latency (fewer when the example split is smaller)
LATENCY_BATCH = 256
#: forward passes timed per latency (fewer when they take longer than :data:`TIME_BUDGET_S` together)
REPEATS = 25
WARMUP = 3
TIME_BUDGET_S = 1.0


def flops_per_example(model: nn.Module, x: Tensor) -> float | None:
    """Floating-point operations of one forward pass over one example (a multiply-add counts 2; torch counts
    matrix products and convolutions), or ``None`` when torch cannot count the model's ops."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            batch.forward(model, batch.index(x, slice(0, 1)))
        return float(counter.get_total_flops())
    except Exception as exc:  # noqa: BLE001 - an op torch cannot count costs the metric, never the run
        log.debug("FLOPs not counted: %s", exc)
        return None
    finally:
        model.train(was_training)


def latency_ms(model: nn.Module, x: Tensor, repeats: int = REPEATS) -> float:
    """Median milliseconds of one forward pass over ``x`` on its device (eval mode, no autograd), after a warm-up;
    at most ``repeats`` passes and at least 3, within about :data:`TIME_BUDGET_S`; to 4 significant digits."""
    device = next(iter(batch.tensors(x).values())).device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    was_training = model.training
    model.eval()
    times: list[float] = []
    try:
        with torch.inference_mode():
            for _ in range(WARMUP):
                batch.forward(model, x)
            sync()
            budget_end = time.perf_counter() + TIME_BUDGET_S
            while len(times) < repeats and (len(times) < 3 or time.perf_counter() < budget_end):
                t0 = time.perf_counter()
                batch.forward(model, x)
                sync()
                times.append((time.perf_counter() - t0) * 1000.0)
    finally:
        model.train(was_training)
    return float(f"{statistics.median(times):.4g}")  # to the precision a timing has


def model_costs(model: nn.Module, x: Tensor, role: str) -> dict[str, float]:
    """``{<role>_flops, <role>_latency_ms, <role>_batch_latency_ms}`` for ``model`` on ``x``'s device, ``x`` a
    batch of example inputs (its first :data:`LATENCY_BATCH` rows are the large batch). A cost that cannot be
    measured is left out (and logged at debug level)."""
    out: dict[str, float] = {}
    flops = flops_per_example(model, x)
    if flops is not None and flops > 0:
        out[f"{role}_flops"] = flops
    try:
        out[f"{role}_latency_ms"] = latency_ms(model, batch.index(x, slice(0, 1)))
        out[f"{role}_batch_latency_ms"] = latency_ms(model, batch.index(x, slice(0, LATENCY_BATCH)))
    except Exception as exc:  # noqa: BLE001 - e.g. out of memory for the large batch
        log.debug("latency not measured: %s", exc)
    return out


def compression(teacher: dict[str, Any], student: dict[str, Any]) -> dict[str, float]:
    """``flops_compression_ratio`` (teacher FLOPs / student FLOPs) when both are known."""
    t, s = teacher.get("teacher_flops"), student.get("student_flops")
    return {"flops_compression_ratio": t / s} if t and s else {}
