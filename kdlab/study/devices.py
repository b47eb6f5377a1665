"""The device pool: which device each worker slot trains on, and how many CPU threads it gets."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Slot:
    index: int
    device: str
    threads: int


def available_devices() -> list[str]:
    import torch

    if torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu"]


def plan_slots(devices: str | list[str], workers: int | str, cpu_count: int | None = None,
               cuda_devices: list[str] | None = None) -> list[Slot]:
    """One worker process per slot; each trial runs on its worker's device.

    * ``devices``: ``auto`` (every CUDA device, else the CPU), ``cpu``, or a list like ``[cuda:0, cuda:1]``.
    * ``workers``: ``auto`` (one per CUDA device; on the CPU one per core) or a number; slots are
      dealt round-robin over the devices, so ``workers: 4`` over two GPUs puts two workers on each.
    * CPU workers split the cores: each gets ``cores // cpu workers`` torch threads (at least 1).
    """
    cores = cpu_count or os.cpu_count() or 1
    if devices == "auto":
        pool = cuda_devices if cuda_devices is not None else available_devices()
        pool = pool or ["cpu"]
    elif devices == "cpu":
        pool = ["cpu"]
    else:
        pool = list(devices)
    if workers == "auto":
        # small models train fastest single-threaded: one worker per core beats threads fighting over cores
        n = len(pool) if pool != ["cpu"] else max(1, cores)
    else:
        n = int(workers)
    if n < 1:
        raise ValueError("workers must be at least 1")
    assigned = [pool[i % len(pool)] for i in range(n)]
    n_cpu = sum(1 for d in assigned if d == "cpu")
    cpu_threads = max(1, cores // n_cpu) if n_cpu else 1
    # a GPU worker needs a core to drive its device
    gpu_threads = max(1, cores // max(1, n)) if n_cpu == 0 else 1
    return [Slot(i, d, cpu_threads if d == "cpu" else gpu_threads) for i, d in enumerate(assigned)]

