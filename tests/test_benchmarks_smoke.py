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


@pytest.mark.parametrize("name", ["overhead", "profile_trial", "switches", "startup", "stacking", "images", "views",
                                  "zoo_kd"])
def test_quick_run(name: str, bench_env, capsys: pytest.CaptureFixture):
    assert _load(name).main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert any(head in out for head in ("| side |", "| phase", "| switch |", "| command |", "| batch |",
                                        "| teacher |", "| recipe |"))
    assert "Machine:" in out


def test_memory_parts(bench_env, tmp_path: Path, capsys: pytest.CaptureFixture):
    """The memory benchmark's child run (one per data size and form, in its own process there) on a tiny folder."""
    bench = _load("memory")
    images = _load("images")
    root = images.make_images(tmp_path / "images", 10, 3, 32)
    bench.child(str(root), True)
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["peak_mib"] > 0 and 0 <= out["test_accuracy"] <= 1


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


def test_study_stacking_report(bench_env):
    """benchmarks/study_stacking.py: a study file's section renders each setting's row, the per-repeat ratios and
    their verdict, and the twice-the-trials line (the studies themselves run with ``--quick``, by hand)."""
    bench = _load("study_stacking")

    def res(rate, wall, best, trials=14):
        return {"rate": rate, "wall": wall, "best": best, "values": [best, best - 0.1], "trials": trials}

    runs = {"off": [res(6.0, 120, 0.94), res(8.0, 100, 0.93)], "auto": [res(24.0, 50, 0.93), res(20.0, 50, 0.94)],
            "auto2": [res(30.0, 60, 0.95, 28), res(30.0, 60, 0.93, 28)]}
    text = "\n".join(bench.section("mnist1d", runs, 14))
    assert "## `studies/mnist1d.yaml`" in text
    assert "per repeat: 4.00x, 2.50x; median **3.25x**: met" in text
    assert "twice the trials (28)" in text and "per repeat: 0.50, 0.60;" in text and "+0.010, +0.000" in text
    assert "| stacked, twice the trials (`--stack auto --n-trials 2N`) | 30.00 | 30.00 / 30.00 | 60 | 28 / 28 |" in text


def test_loss_speed_quick(bench_env, capsys: pytest.CaptureFixture):
    assert _load("loss_speed").main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "| method | s / epoch | vs kd |" in out and "| `rkd (before)` |" in out and "Machine:" in out


def test_text_parts(bench_env, write_config):
    """benchmarks/text.py: its three study files validate, the tuned configs carry a study's best params, the
    order-free ceiling is computed, and the report renders (the studies themselves run in `--quick`, by hand)."""
    bench = _load("text")
    from kdlab_test_helpers import load_config

    base = bench.base_config(quick=True)
    for method in ("kd", "ce", "aux"):
        cfg = bench.study_config(method, base, trials=2)
        assert cfg["study"]["name"] == f"text-{method}" and cfg["loss"]["name"] == method
        load_config(write_config(cfg, f"text-{method}.yaml"))
    best = {"optimizer.lr": 0.004, "loss.params.temperature": 3.0}
    tuned = bench.tuned("aux", base, best)
    assert tuned["optimizer"]["lr"] == 0.004 and tuned["loss"]["params"]["temperature"] == 3.0
    assert tuned["loss"]["params"]["aux"] == bench.AUX_MODEL and "study" not in tuned
    ceiling = bench.order_free_ceiling(base["data"]["params"], n=3000)
    assert 0.7 < ceiling < 0.9  # word order decides the rest
    run = {"test_accuracy": 0.8, "val_accuracy": 0.8, "agreement": 0.8}
    study = {"trials": 2, "states": {"COMPLETE": 2}, "best_params": best, "best_val_accuracy": 0.8, "wall_s": 1.0,
             "worker_start": "fork"}
    text = bench.report({"studies": {m: study for m in ("kd", "ce", "aux")},
                         "runs": {m: [run, run] for m in bench.ROWS}, "teacher_test_accuracy": 0.97,
                         "teacher_params": 1000.0, "order_free_ceiling": ceiling, "ceiling_reviews": 3000,
                         "seeds": [0, 1], "wall_s": 60.0, "machine": "test", "config": base, "quick": True,
                         "argv": ["--quick"]})
    assert "| `kd` |" in text and "| `kd, no transfer split` |" in text and "gap to teacher" in text
    assert "Machine: test" in text
