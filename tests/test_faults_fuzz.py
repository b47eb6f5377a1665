"""A fuzz test of the run path (docs/faults.md): a generated corpus of broken components (data, teacher, student,
loss) and broken stores, each run through ``kdlab run --no-track`` and ``kdlab run``. Every case must exit non-zero
within seconds with a one-paragraph error and no traceback, and leave the run recorded earlier in the same store
unchanged. A few cases also run in a real subprocess (what a user's terminal shows)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import yaml
from pydantic import BaseModel, ConfigDict
from torch import nn

import kdlab
from kdlab.cli import main

CLASSES, FEATURES = 3, 6
#: every case ends within this many seconds (the runs are one epoch of a tiny model on 100 rows)
CASE_LIMIT_S = 30


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- the corpus: a working component of each kind, and what can go wrong with it --------------------------------


def make_data(fault: str | None = None):
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> kdlab.Split:
        return kdlab.Split(torch.randn(n, FEATURES, generator=g), torch.randint(0, CLASSES, (n,), generator=g))

    train, val, test = split(60), split(20), split(20)
    num_classes = CLASSES
    if fault == "labels-out-of-range":
        train.y[3] = CLASSES + 4
    elif fault == "negative-labels":
        val.y[0] = -2
    elif fault == "float-labels":
        train.y = train.y.float()
    elif fault == "rows-mismatch":
        train.y = train.y[:-5]
    elif fault == "nan-inputs":
        train.x[2, 1] = float("nan")
    elif fault == "no-classes":
        num_classes = 0
    elif fault == "shapes-differ":
        test.x = torch.randn(20, FEATURES + 2)
    elif fault == "empty-split":
        val = kdlab.Split(val.x[:0], val.y[:0])
    elif fault == "wrong-type":
        return (train, val, test)
    elif fault == "raises":
        raise ValueError("the data folder is empty")
    return kdlab.Data(train=train, val=val, test=test, num_classes=num_classes)


class Net(nn.Module):
    def __init__(self, num_classes: int, fault: str | None = None):
        super().__init__()
        self.fault = fault
        self.head = nn.Linear(FEATURES, num_classes + (2 if fault == "wide" else 0))

    def forward(self, x):
        out = self.head(x.flatten(1))
        if self.fault == "raises":
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (a plugin bug)")
        if self.fault == "vector":
            return out.sum(1)
        if self.fault == "tuple":
            return out, x
        if self.fault == "int-logits":
            return out.argmax(1, keepdim=True).expand(-1, out.shape[1])
        if self.fault == "fewer-rows":
            return out[:-1]
        if self.fault == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return out


def make_model(fault: str | None = None) -> Callable[..., Any]:
    def factory(params, *, input_shape, num_classes):
        if fault == "factory-raises":
            raise ValueError("hidden widths must be positive")
        if fault == "wrong-type":
            return {"weights": None}
        return Net(num_classes, fault)

    return factory


class GoodLoss(kdlab.Loss):
    uses_teacher = False

    def __init__(self, params=None, fault: str | None = None):
        super().__init__()
        self.fault = fault

    def setup(self, ctx):
        if self.fault == "setup-raises":
            raise KeyError("adapter")

    def forward(self, inputs):
        ce = nn.functional.cross_entropy(inputs.student_logits, inputs.labels.clamp(min=0))
        if self.fault == "dict":
            return {"ce": ce}
        if self.fault == "none":
            return None
        if self.fault == "vector-total":
            per_row = nn.functional.cross_entropy(inputs.student_logits, inputs.labels.clamp(min=0), reduction="none")
            return kdlab.LossOutput(per_row, {"ce": ce})
        if self.fault == "nan-total":
            return kdlab.LossOutput(ce * float("nan"), {"ce": ce})
        if self.fault == "detached":
            return kdlab.LossOutput(ce.detach(), {"ce": ce.detach()})
        if self.fault == "terms-list":
            return kdlab.LossOutput(ce, [ce])
        if self.fault == "raises":
            raise IndexError("index 7 is out of bounds for dimension 1 with size 3")
        return kdlab.LossOutput(ce, {"ce": ce})


def make_loss(fault: str | None = None) -> Callable[..., Any]:
    def factory(params):
        if fault == "wrong-type":
            return lambda inputs: 0.0
        return GoodLoss(params, fault)

    return factory


@dataclass(frozen=True)
class Case:
    """One broken thing and what kdlab must say about it."""

    kind: str  # data, teacher, student, loss, store
    fault: str
    expect: tuple[str, ...]  # fragments of the error message
    code: int = 3

    @property
    def id(self) -> str:
        return f"{self.kind}-{self.fault}"


DATA_FAULTS = {
    "labels-out-of-range": ("split 'train' has labels in [0, 7]", "expected labels in [0, 2]"),
    "negative-labels": ("split 'val' has labels in [-2",),
    "float-labels": ("labels of dtype float32; expected int64",),
    "rows-mismatch": ("expected int64 labels of shape (60,)",),
    "nan-inputs": ("non-finite inputs",),
    "no-classes": ("num_classes=0; expected a positive int",),
    "shapes-differ": ("inputs have different shapes",),
    "empty-split": ("split 'val' has no rows",),
    "wrong-type": ("returned tuple, expected kdlab.Data",),
    "raises": ("failed to build: ValueError: the data folder is empty",),
}
MODEL_FAULTS = {
    "wide": ("float32 tensor of shape (16, 5)", "expected logits of shape (16, 3)"),
    "vector": ("tensor of shape (16,)", "expected logits of shape (16, 3)"),
    "tuple": ("returned a tuple", "expected logits"),
    "int-logits": ("int64 tensor", "expected logits of shape (16, 3)"),
    "fewer-rows": ("shape (15, 3)", "expected logits of shape (16, 3)"),
    "raises": ("raised in forward: RuntimeError: mat1 and mat2",),
    "factory-raises": ("failed to build: ValueError: hidden widths must be positive",),
    "wrong-type": ("returned dict, expected a torch.nn.Module",),
}
LOSS_FAULTS = {
    "dict": ("returned a dict", "wrap it as kdlab.LossOutput"),
    "none": ("returned a NoneType", "expected a kdlab.LossOutput"),
    "vector-total": ("total of a float32 tensor of shape (16,)", "expected a scalar tensor"),
    "nan-total": ("total of nan on the first batch", "expected a finite number"),
    "detached": ("does not depend on the student",),
    "terms-list": ("terms of a list", "dict of named scalar tensors"),
    "raises": ("raised in forward: IndexError: index 7",),
    "setup-raises": ("raised in setup: KeyError",),
    "wrong-type": ("returned function, expected a kdlab.Loss",),
}
STORE_FAULTS = {
    "in-memory": ("sqlite://", ("in-memory database",)),
    "plain-words": ("my runs", ("is a folder path, not a tracking URI",)),
    "unknown-scheme": ("foo://bar", ("unknown scheme 'foo://'",)),
    "closed-port": ("http://127.0.0.1:{port}", ("no MLflow server answers",)),
    "folder": ("sqlite:///{tmp}", ("is a folder; give a database file",)),
    "parent-is-a-file": ("sqlite:///{tmp}/afile/mlflow.db", ("is a file, so",)),
    "not-a-database": ("sqlite:///{tmp}/afile", ("is not an SQLite database",)),
    "half-created": ("sqlite:///{tmp}/half.db", ("creation was cut short",)),
}


def corpus() -> list[Case]:
    cases = [Case("data", f, e) for f, e in DATA_FAULTS.items()]
    cases += [Case("student", f, e) for f, e in MODEL_FAULTS.items()]
    cases += [Case("teacher", f, e) for f, e in MODEL_FAULTS.items() if f in ("wide", "vector", "raises")]
    cases += [Case("loss", f, e) for f, e in LOSS_FAULTS.items()]
    cases += [Case("student", "oom", ("out of memory while training", "lower training.batch_size"), code=1)]
    return cases


class FuzzPlugin:
    """Registers the working component of each kind as ``fz-ok`` and each broken one as ``fz-<fault>``."""

    @kdlab.hookimpl
    def kdlab_register_data(self, register):
        for fault in [None, *DATA_FAULTS]:
            register(f"fz-{fault or 'ok'}", lambda params, seed, f=fault: make_data(f), NoParams)

    @kdlab.hookimpl
    def kdlab_register_teachers(self, register):
        for fault in [None, *MODEL_FAULTS, "oom"]:
            register(f"fz-{fault or 'ok'}", make_model(fault), NoParams)

    @kdlab.hookimpl
    def kdlab_register_students(self, register):
        for fault in [None, *MODEL_FAULTS, "oom"]:
            register(f"fz-{fault or 'ok'}", make_model(fault), NoParams)

    @kdlab.hookimpl
    def kdlab_register_losses(self, register):
        for fault in [None, *LOSS_FAULTS]:
            register(f"fz-{fault or 'ok'}", make_loss(fault), NoParams)


def run_config(case: Case | None, uri: str) -> dict[str, Any]:
    names = {"data": "fz-ok", "teacher": None, "student": "fz-ok", "loss": "fz-ok"}
    if case is not None and case.kind in names:
        names[case.kind] = f"fz-{case.fault}"
    cfg: dict[str, Any] = {
        "data": {"name": names["data"]},
        "student": {"name": names["student"]},
        "loss": {"name": names["loss"]},
        "training": {"epochs": 1, "batch_size": 16, "device": "cpu"},
        "tracking": {"uri": uri, "experiment": "fuzz", "log_model": False},
    }
    if names["teacher"]:
        cfg["teacher"] = {"name": names["teacher"], "training": {"epochs": 1, "batch_size": 16}}
        cfg["loss"] = {"name": "kd"}
    return cfg


# -- fixtures ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_plugin():
    from kdlab.plugins import get_plugins

    plugins = get_plugins()
    plugins.register(FuzzPlugin(), "fuzz")
    yield plugins
    plugins.unregister("fuzz")


def snapshot(client, run_id: str) -> tuple:
    run = client.get_run(run_id)
    return (run.info.status, run.info.end_time, dict(run.data.metrics), dict(run.data.params), dict(run.data.tags))


@pytest.fixture(scope="module")
def store(tmp_path_factory, fuzz_plugin):
    """A store holding one good run, recorded before any broken case runs."""
    import mlflow

    folder = tmp_path_factory.mktemp("fuzz-store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    path = folder / "good.yaml"
    path.write_text(yaml.safe_dump(run_config(None, uri)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDLAB_HOME", str(folder / "home"))
        assert main(["run", str(path), "-q"]) == 0
    client = mlflow.MlflowClient(uri)
    (good,) = client.search_runs([client.get_experiment_by_name("fuzz").experiment_id])
    return uri, client, good.info.run_id, snapshot(client, good.info.run_id)


def check_error(code: int, err: str, took: float, case: Case) -> None:
    assert code == case.code, err
    assert err.startswith("kdlab: error: "), err
    assert "Traceback" not in err and 'File "' not in err
    assert "\n\n" not in err.strip() and len(err) < 3000, err  # one paragraph, bounded
    for fragment in case.expect:
        assert fragment in err, err
    if case.kind != "store":
        assert f"fz-{case.fault}" in err and "plugin 'fuzz'" in err, err  # names the component and its plugin
    assert took < CASE_LIMIT_S


# -- the fuzz test -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", corpus(), ids=lambda c: c.id)
def test_broken_components_fail_clearly_untracked_and_tracked(case, store, write_config, capsys):
    uri, client, good_id, before = store
    path = write_config(run_config(case, uri))
    for extra in (["--no-track"], []):
        start = time.monotonic()
        code = main(["run", str(path), "-q", *extra])
        check_error(code, capsys.readouterr().err, time.monotonic() - start, case)
    assert snapshot(client, good_id) == before
    if case.kind == "teacher":
        from kdlab.paths import cache_dir

        assert not any(cache_dir("teachers").iterdir())  # a broken teacher is never cached


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("fault", list(STORE_FAULTS))
def test_broken_stores_fail_clearly_before_any_work(fault, store, write_config, tmp_path, capsys, kdlab_home):
    import sqlite3

    _, client, good_id, before = store
    (tmp_path / "afile").write_text("not a database")
    with sqlite3.connect(tmp_path / "half.db") as conn:
        conn.execute("create table datasets (x int)")
    uri = STORE_FAULTS[fault][0].format(port=closed_port(), tmp=tmp_path)
    case = Case("store", fault, STORE_FAULTS[fault][1], code=1)
    path = write_config(run_config(None, uri))
    start = time.monotonic()
    code = main(["run", str(path), "-q"])
    check_error(code, capsys.readouterr().err, time.monotonic() - start, case)
    assert not (kdlab_home / "cache" / "data").exists()  # nothing was built
    assert snapshot(client, good_id) == before


DRIVER = """
import sys
sys.path.insert(0, {tests!r})
import test_faults_fuzz as fuzz
from kdlab.plugins import get_plugins
get_plugins().register(fuzz.FuzzPlugin(), "fuzz")
from kdlab.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_terminal_shows_one_paragraph_and_no_traceback(tmp_path, write_config):
    """What a user's terminal shows, from a real process (the in-process cases above see what kdlab prints)."""
    case = Case("student", "raises", MODEL_FAULTS["raises"])
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(tests=str(Path(__file__).parent)))
    path = write_config(run_config(case, f"sqlite:///{tmp_path}/mlflow.db"))
    env = {**os.environ, "KDLAB_HOME": str(tmp_path / "home")}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(driver), "run", str(path), "-q", "--no-track"], capture_output=True,
                          text=True, env=env, timeout=120)
    check_error(proc.returncode, proc.stderr, time.monotonic() - start - 15, case)  # less a busy start-up


def test_debug_adds_the_traceback(store, write_config, capsys, monkeypatch):
    case = Case("student", "raises", MODEL_FAULTS["raises"])
    path = str(write_config(run_config(case, store[0])))
    assert main(["--debug", "run", path, "-q", "--no-track"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "in forward" in err and err.rstrip().endswith("(--debug shows the traceback)")
    monkeypatch.setenv("KDLAB_DEBUG", "1")
    assert main(["run", path, "-q", "--no-track"]) == 3
    assert "Traceback" in capsys.readouterr().err
