"""Shared pieces of the speed benchmarks: the benchmark config, machine description, timing and tables.

Benchmarks are not tests: they print markdown tables of medians and ratios and may write them under
``benchmarks/results/``. Each script has a ``--quick`` flag (tiny sizes) that ``tests/test_benchmarks_smoke.py`` uses
to keep the scripts from rotting.
"""

from __future__ import annotations

import copy
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

RESULTS = Path(__file__).parent / "results"

#: The benchmark trial of issue 5: Hinton KD on MNIST-1D (default splits: 3,500 train / 500 val / 1,000 test, no
#: transfer split), an MLP student with two hidden layers of 100, batch 100, 30 epochs, tracking on, no model logging.
#: The teacher is trained once per benchmark process (not timed) and cached like a study's.
BASE: dict[str, Any] = {
    "data": {"name": "mnist1d", "params": {}},
    # the teacher of studies/mnist1d.yaml, trained for fewer epochs (its accuracy does not matter for speed)
    "teacher": {"name": "cnn1d", "params": {"channels": [64, 64, 64], "kernel_size": [5, 3, 3], "batchnorm": True},
                "training": {"epochs": 8, "batch_size": 100, "seed": 0, "optimizer": {"name": "adam", "lr": 0.003}}},
    "student": {"name": "mlp", "params": {"hidden": [100, 100]}},
    "loss": {"name": "kd", "params": {"temperature": 4.0, "alpha": 0.9}},
    "optimizer": {"name": "adam", "lr": 0.003},
    "training": {"epochs": 30, "batch_size": 100, "seed": 0, "device": "cpu"},
    "tracking": {"enabled": True, "log_model": False, "experiment": "bench"},
}


def base_config(epochs: int | None = None, teacher_epochs: int | None = None, **overrides: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(BASE)
    if epochs is not None:
        cfg["training"]["epochs"] = epochs
    if teacher_epochs is not None:
        cfg["teacher"]["training"]["epochs"] = teacher_epochs
    for key, value in overrides.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return cfg


def loaded_config(cfg: dict[str, Any], name: str = "benchmark"):
    from kdlab.config import Source, dump_yaml, load_config
    from kdlab.plugins import get_registry

    return load_config(Source(name, dump_yaml(cfg)), registry=get_registry())


#: generated data, the trained teacher and its outputs are kept between benchmark processes (none of it is timed
#: except where a script says so); MLflow stores and Optuna storages are always new
CACHE = Path(tempfile.gettempdir()) / "kdlab-bench-cache"


def fresh_home(tag: str) -> Path:
    """A new, empty KDLAB_HOME (MLflow store, Optuna storage) for this process, with the shared cache; returned."""
    home = Path(tempfile.mkdtemp(prefix=f"kdlab-bench-{tag}-"))
    os.environ["KDLAB_HOME"] = str(home)
    os.environ["KDLAB_CACHE_DIR"] = str(CACHE)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return home


def machine() -> str:
    """One line: cores, CPU model, load, Python, torch, MLflow and Optuna versions."""
    import torch

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = [f"torch {torch.__version__}"]
    for mod in ("mlflow", "optuna"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{os.cpu_count()} cores ({model}), load average {load:.2f} at start, Python {platform.python_version()}, "
            f"{', '.join(versions)}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
            f"{'GPU ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}")


def peak_rss_mib() -> float:
    """Peak resident memory of this process (MiB)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def current_rss_mib() -> float:
    """Resident memory of this process now (MiB), from /proc (0 where there is none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def table(header: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(value: float, target: float, at_most: bool = True) -> str:
    ok = value <= target if at_most else value >= target
    return f"{'met' if ok else 'MISSED'} (target {'<=' if at_most else '>='} {target:g}x)"


def report(name: str, lines: list[str], write: bool) -> None:
    """Print a benchmark's markdown (``lines``, then the machine it ran on); with ``--write`` also save it as
    ``results/<name>``."""
    text = "\n".join([*lines, "", f"Machine: {machine()}.", ""])
    print()
    print(text)
    if write:
        print(f"wrote {write_result(name, text)}")


def write_result(name: str, text: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(text)
    return path
