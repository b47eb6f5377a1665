"""Start-up cost of the ``kdlab`` command: wall time of ``kdlab --help`` and ``kdlab plugins`` (medians of fresh
processes), the heaviest imports of ``kdlab --help`` (``python -X importtime``), and which heavy libraries each
command imports (``kdlab plugins`` must not import MLflow)::

    .venv/bin/python benchmarks/startup.py [--runs 20] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

KDLAB = str(Path(sys.executable).parent / "kdlab")
HEAVY = ("torch", "mlflow", "optuna", "sqlalchemy", "pydantic", "numpy", "pluggy", "yaml", "rich")

#: runs the CLI in-process and reports which heavy top-level packages it imported
PROBE = """
import contextlib, io, json, sys
from kdlab.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main(sys.argv[1:])
    except SystemExit:
        pass
print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(%r))))
""" % (HEAVY,)


def wall(cmd: list[str], runs: int, env: dict[str, str]) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        out.append(time.perf_counter() - t0)
    return out


def imported(args: list[str], env: dict[str, str]) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def heaviest_imports(env: dict[str, str], top: int = 6) -> list[tuple[str, float]]:
    """Top-level packages by cumulative import time (ms) of ``kdlab --help``."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "kdlab", "--help"], env=env, capture_output=True,
                          text=True, check=True)
    totals: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line or "cumulative" in line:
            continue
        _, cumulative, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
        if not name.startswith(" ") and "." not in name.strip():  # top-level entries only
            totals[name.strip()] = max(totals.get(name.strip(), 0.0), int(cumulative) / 1000)
    return sorted(totals.items(), key=lambda kv: -kv[1])[:top]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test")
    ap.add_argument("--write", action="store_true", help="write benchmarks/results/startup.md")
    args = ap.parse_args(argv)
    if args.quick:
        args.runs = 2
    home = tempfile.mkdtemp(prefix="kdlab-bench-startup-")
    env = {**os.environ, "KDLAB_HOME": home}
    wall([KDLAB, "--help"], 1, env)  # warm the OS file cache and __pycache__
    help_t = wall([KDLAB, "--help"], args.runs, env)
    python_t = wall([sys.executable, "-c", "pass"], args.runs, env)
    plugins_t = wall([KDLAB, "plugins"], max(1, args.runs // 4), env)
    help_mods, plugins_mods = imported(["--help"], env), imported(["plugins"], env)
    heavy = heaviest_imports(env)
    mh = C.median(help_t)
    rows = [
        ["`python -c pass` (the floor)", C.median(python_t), "—"],
        ["`kdlab --help`", mh, ", ".join(help_mods) or "none of them"],
        ["`kdlab plugins`", C.median(plugins_t), ", ".join(plugins_mods) or "none of them"],
    ]
    lines = [
        f"### Start-up ({args.runs} runs of each, fresh processes; heavy packages checked: {', '.join(HEAVY)})",
        "",
        C.table(["command", "median wall s", "heavy packages imported"], rows),
        "",
        f"- `kdlab --help` median {mh:.3f} s — {'met' if mh < 0.3 else 'MISSED'} (target < 0.3 s); "
        f"min {min(help_t):.3f}, max {max(help_t):.3f} s.",
        f"- `kdlab plugins` imports MLflow: {'YES — MISSED' if 'mlflow' in plugins_mods else 'no — met'}.",
        "- Heaviest imports of `kdlab --help` (cumulative ms, `-X importtime`): "
        + ", ".join(f"{name} {ms:.0f}" for name, ms in heavy) + ".",
    ]
    C.report('startup.md', lines, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
