"""The ``kdlab`` command. Subcommands import what they need when they run, so ``kdlab --help`` stays fast
(no torch, no MLflow)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from kdlab import __version__


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set loss.params.temperature=2 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdlab", description="kdlab: a laboratory for knowledge distillation (teachers, students, losses, data "
        "as plugins; Optuna studies; MLflow tracking).")
    parser.add_argument("--version", action="version", version=f"kdlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="distil a teacher into a student as a config file says, tracked in MLflow")
    p.add_argument("file", help="run config (YAML)")
    _add_overrides(p)
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: tracking.uri, $MLFLOW_TRACKING_URI, "
                   "or sqlite under $KDLAB_HOME)")
    p.add_argument("--device", help="override training.device: auto, cpu, cuda, cuda:N")
    p.add_argument("--no-track", action="store_true", help="do not record the run in MLflow")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")

    p = sub.add_parser("validate", help="check a config file (and its component params) without running it")
    p.add_argument("file")
    _add_overrides(p)

    p = sub.add_parser("plugins", help="list installed plugins and their components; `plugins show NAME` for params")
    p.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    p.add_argument("name", nargs="?", help="component name (with `show`)")
    p.add_argument("--kind", choices=["data", "teacher", "student", "loss"], help="component kind (with `show`)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("study", help="search distillation hyperparameters with Optuna; `study show FILE` summarises")
    p.add_argument("target", nargs="+", metavar="[show] FILE", help="study file, or `show FILE`")
    _add_overrides(p)
    p.add_argument("--n-trials", type=int, help="trial budget (default: study.n_trials)")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--workers", type=int, help="worker processes (default: study.workers)")
    p.add_argument("--storage", help="Optuna storage URL (default: study.storage or a journal file under $KDLAB_HOME)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI")
    p.add_argument("-q", "--quiet", action="store_true", help="no live display")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from kdlab.errors import KdlabError

    try:
        handler = {"run": cmd_run, "validate": cmd_validate, "plugins": cmd_plugins, "study": cmd_study}[args.command]
        return handler(args)
    except KdlabError as exc:
        print(f"kdlab: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("kdlab: interrupted", file=sys.stderr)
        return 130


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from kdlab.config import parse_override

    return dict(parse_override(o) for o in args.overrides)


def cmd_validate(args: argparse.Namespace) -> int:
    from kdlab.config import load_config

    loaded = load_config(args.file, overrides=_overrides(args))
    if loaded.config.study is not None:
        from kdlab.study.config import load_study_config

        load_study_config(loaded)
    cfg = loaded.config
    parts = [f"data={cfg.data.name}", f"student={cfg.student.name}", f"loss={cfg.loss.name}"]
    if cfg.teacher:
        parts.insert(1, f"teacher={cfg.teacher.name}")
    print(f"{args.file}: ok ({', '.join(parts)}{', with a study' if cfg.study is not None else ''})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from kdlab.config import load_config

    overrides = _overrides(args)
    if args.tracking_uri:
        overrides["tracking.uri"] = args.tracking_uri
    if args.device:
        overrides["training.device"] = args.device
    if args.no_track:
        overrides["tracking.enabled"] = False
    loaded = load_config(args.file, overrides=overrides)

    from kdlab.console import RichReporter, make_console, metrics_table
    from kdlab.engine import RunOptions, run

    console = make_console()
    reporter = RichReporter(quiet=args.quiet, console=console)
    result = run(loaded, RunOptions(reporter=reporter))
    order = ["test_accuracy", "val_accuracy", "old_task_accuracy", "new_task_accuracy", "forgetting",
             "teacher_test_accuracy", "assistant_test_accuracy", "agreement", "student_params", "teacher_params",
             "compression_ratio", "train_time_s"]
    rows = [(k, result.metrics[k]) for k in order if k in result.metrics]
    if not args.quiet:
        console.print(metrics_table(f"{loaded.name}: {loaded.config.student.name} <- "
                                    f"{loaded.config.teacher.name if loaded.config.teacher else 'labels'} "
                                    f"({loaded.config.loss.name})", rows))
        if result.run_id:
            from kdlab.paths import default_tracking_uri

            uri = loaded.config.tracking.uri or default_tracking_uri()
            console.print(f"MLflow run {result.run_id} in {uri}\n  view: mlflow ui --backend-store-uri {uri}")
    else:
        print(" ".join(f"{k}={v:.4f}" for k, v in rows))
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from kdlab.plugins_cli import plugins_list, plugins_show

    if args.action == "show":
        return plugins_show(args.name, kind=args.kind, as_json=args.json)
    return plugins_list(as_json=args.json)


def cmd_study(args: argparse.Namespace) -> int:
    from kdlab.study.cli import study_command

    return study_command(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
