"""The speed benchmarks still run (tiny sizes, nothing timed or compared here: benchmarks/README.md has the numbers).

The in-process benchmarks run end to end with ``--quick``; the two that start whole ``kdlab study`` commands
(``study_speed.py``, ``workers.py``) have their parts checked in-process instead, to keep this test a few seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture
def bench_env(shared_cache: Path, monkeypatch: pytest.MonkeyPatch):
    """Benchmarks set KDLAB_HOME / KDLAB_CACHE_DIR themselves; point their shared cache at the tests' one."""
    common = _load("_common")
    monkeypatch.setattr(common, "CACHE", shared_cache)
    monkeypatch.setitem(sys.modules, "_common", common)
    for key in ("KDLAB_HOME", "KDLAB_CACHE_DIR"):
        monkeypatch.setenv(key, os.environ.get(key, ""))  # restored after the test
    return common


@pytest.mark.parametrize("name", ["overhead", "profile_trial", "switches", "startup"])
def test_quick_run(name: str, bench_env, capsys: pytest.CaptureFixture):
    assert _load(name).main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "| side |" in out or "| phase" in out or "| switch |" in out or "| command |" in out
    assert "Machine:" in out


def test_study_speed_parts(bench_env, tmp_path: Path):
    bench = _load("study_speed")
    study_file = bench.prepare(tmp_path, trials=1, epochs=1, teacher_epochs=1)
    from kdlab.study.config import load_study_config
    from kdlab_test_helpers import load_config

    lstudy = load_study_config(load_config(study_file))
    assert lstudy.study.n_trials == 1 and set(lstudy.study.search) == set(bench.SEARCH)
    home = tmp_path / "hand"
    home.mkdir()
    for f in ("data.pt", "spec.json"):
        (home / f).write_bytes((tmp_path / f).read_bytes())
    out = bench.hand_written_study(home, trials=1, epochs=1)
    assert 0 <= out["best"] <= 1 and out["threads"] >= 1
    json.dumps(out)


def test_workers_parts(bench_env):
    bench = _load("workers")
    assert bench.hwm_mib(os.getpid()) > 0
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in bench.children(os.getpid())  # the reader finds a child it must measure
    finally:
        child.kill()
        child.wait()
    assert 0 < bench.pss_mib(os.getpid()) <= bench.hwm_mib(os.getpid())
    assert set(bench.CONFIGS) == {"1x1", "1x2", "2x1", "2x1s"}
    assert bench.run_hand(2, 2, 1) > 0  # two concurrent processes of one hand-written 1-epoch trial each


def test_storage_parts(bench_env, tmp_path):
    """benchmarks/storage.py starts PostgreSQL and an MLflow server (minutes): here its claim loop on a journal file
    and its study file only."""
    bench = _load("storage")
    url = f"journal:{tmp_path / 'optuna.journal'}"
    assert bench.claims(url, 1, 3, "smoke") > 0  # asserts that exactly the budget ran
    from kdlab.study.config import load_study_config
    from kdlab_test_helpers import load_config

    lstudy = load_study_config(load_config(bench.write_study(tmp_path, 4, 2, "smoke")))
    assert lstudy.study.n_trials == 4 and lstudy.name == "smoke"
