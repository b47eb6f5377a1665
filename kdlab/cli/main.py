"""The command line: the parser of every subcommand, and exit codes (1 error, 2 invalid config, 3 plugin error,
130 interrupted)."""

from __future__ import annotations

import argparse
import sys

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

    p = sub.add_parser("study", help="search distillation hyperparameters with Optuna; `study show FILE` summarises, "
                       "`study status FILE` shows progress by machine and device")
    p.add_argument("target", nargs="+", metavar="[show|status] FILE", help="study file, or `show FILE`, `status FILE`")
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
        if args.command in ("run", "validate"):
            from kdlab.cli.run import main as command
        elif args.command == "plugins":
            from kdlab.cli.plugins import main as command
        else:
            from kdlab.cli.study import main as command
        return command(args)
    except KdlabError as exc:
        print(f"kdlab: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("kdlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
