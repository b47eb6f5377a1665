#!/usr/bin/env python
"""Screenshots of a study in the MLflow UI, for a person to look at (not a test, not run in CI).

Starts ``mlflow server`` on 127.0.0.1 against a kdlab store (its SQLite file, with ``--artifacts-destination`` the
``artifacts/`` folder beside it: the store may have been copied from elsewhere), then takes screenshots with headless
Chromium (Debian: ``apt-get install -y chromium``) of: the experiment, the study run (overview, model metrics,
plots, the interactive page), the best trial, a pruned trial, the teacher, the best student's logged model and its
registered version. Stops the server at the end.

    python scripts/mlflow_screenshots.py                       # ./kdlab-runs, the newest study experiment
    python scripts/mlflow_screenshots.py --store /tmp/kdlab-runs --experiment mnist1d --out shots/
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("no Chromium found: apt-get install -y chromium")


def wait_for(url: str, seconds: float = 90) -> None:
    end = time.time() + seconds
    while time.time() < end:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"the MLflow server did not answer at {url} within {seconds:.0f} s")


def shoot(browser: str, url: str, path: Path, width: int, height: int, wait_ms: int) -> None:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-extensions", "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
               "--run-all-compositor-stages-before-draw",
               f"--window-size={width},{height}", f"--virtual-time-budget={wait_ms}", f"--screenshot={path}", url]
        subprocess.run(cmd, capture_output=True, timeout=120)
    print(f"{path.name}: {url}" if path.exists() else f"FAILED {path.name}: {url}")


def pages(uri: str, experiment: str | None) -> list[tuple[str, str]]:
    """``[(file name, URL fragment)]`` of the pages worth a look."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exps = [e for e in client.search_experiments() if e.name != "Default"]
    if experiment:
        exps = [e for e in exps if e.name == experiment]
    studies = []
    for e in exps:
        parents = client.search_runs([e.experiment_id], filter_string="tags.`kdlab.role` = 'study'")
        if parents:
            studies.append((parents[0].info.start_time, e, parents[0]))
    if not studies:
        sys.exit(f"no study experiment in {uri}")
    _, exp, parent = max(studies, key=lambda s: s[0])
    eid, pid = exp.experiment_id, parent.info.run_id
    runs = client.search_runs([eid])
    out = [("01-experiment", f"#/experiments/{eid}/runs"),
           ("02-experiment-chart", f"#/experiments/{eid}/runs?compareRunsMode=CHART"),
           ("03-study-run", f"#/experiments/{eid}/runs/{pid}"),
           ("04-study-run-metrics", f"#/experiments/{eid}/runs/{pid}/model-metrics"),
           ("05-study-plot-comparison", f"#/experiments/{eid}/runs/{pid}/artifacts/plots/comparison.png"),
           ("06-study-plot-parallel", f"#/experiments/{eid}/runs/{pid}/artifacts/plots/parallel_coordinate.png"),
           ("07-study-plot-history", f"#/experiments/{eid}/runs/{pid}/artifacts/plots/optimization_history.png"),
           ("08-study-html", f"#/experiments/{eid}/runs/{pid}/artifacts/plots/study.html")]
    best_id = parent.data.tags.get("kdlab.best_run_id")
    if best_id:
        out += [("09-best-trial", f"#/experiments/{eid}/runs/{best_id}"),
                ("10-best-trial-metrics", f"#/experiments/{eid}/runs/{best_id}/model-metrics")]
        best = client.get_run(best_id)
        if best.outputs and best.outputs.model_outputs:
            out.append(("11-best-model", f"#/experiments/{eid}/models/{best.outputs.model_outputs[0].model_id}"))
    pruned = [r for r in runs if r.data.tags.get("kdlab.trial_state") == "PRUNED"]
    if pruned:
        out.append(("12-pruned-trial", f"#/experiments/{eid}/runs/{pruned[0].info.run_id}"))
    teachers = [r for r in runs if r.data.tags.get("kdlab.role") == "teacher"]
    if teachers:
        out.append(("13-teacher", f"#/experiments/{teachers[0].info.experiment_id}/runs/{teachers[0].info.run_id}"))
    registered = parent.data.tags.get("kdlab.registered_model")
    if registered:
        name, version = registered.rsplit("/", 1)
        out.append(("14-registered-version", f"#/models/{name}/versions/{version}"))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default=os.environ.get("KDLAB_HOME", "kdlab-runs"),
                    help="a kdlab store: a folder with mlflow.db and artifacts/ (default: $KDLAB_HOME, ./kdlab-runs)")
    ap.add_argument("--experiment", help="the study's experiment (default: the newest study)")
    ap.add_argument("--out", default="screenshots", help="folder for the PNGs (default: ./screenshots)")
    ap.add_argument("--port", type=int, default=5055)
    ap.add_argument("--width", type=int, default=1440)
    ap.add_argument("--height", type=int, default=1000)
    ap.add_argument("--wait-ms", type=int, default=40000, help="how long the page may load before the shot")
    args = ap.parse_args(argv)
    store = Path(args.store).resolve()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    browser = chromium()
    todo = pages(uri, args.experiment)
    base = f"http://127.0.0.1:{args.port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(args.port),
         "--backend-store-uri", uri, "--artifacts-destination", str(store / "artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=open(out / "mlflow-server.log", "w"), start_new_session=True,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    try:
        wait_for(f"{base}/health")
        # the first page a fresh server sends is slow (its bundle read from disk): load one before the shots
        shoot(browser, f"{base}/#/experiments", out / "00-warm-up.png", args.width, args.height, args.wait_ms)
        for name, fragment in todo:
            shoot(browser, f"{base}/{fragment}", out / f"{name}.png", args.width, args.height, args.wait_ms)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    print(f"screenshots in {out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
