"""The command line: the parser of every subcommand, and exit codes (1 error, 2 invalid config, 3 plugin error,
130 interrupted, 143 terminated by SIGTERM).

Every failure is one short message on stderr, never a traceback; ``--debug`` (or ``KDLAB_DEBUG=1``) adds the
traceback, for bug reports and plugin authors."""

from __future__ import annotations

import argparse
import os
import sys

from kdlab import __version__

ENV_DEBUG = "KDLAB_DEBUG"
#: the longest error message printed (the rest is cut, saying how much)
MAX_MESSAGE = 8000


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set loss.params.temperature=2 (repeatable)")


def _stack(text: str) -> int | str:
    return "auto" if text == "auto" else _positive_int(text)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 1 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError(f"expected a number from 1 to 1000000, got {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds above 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help=f"print the traceback of an error (also: {ENV_DEBUG}=1)")
    parser = argparse.ArgumentParser(
        prog="kdlab", description="kdlab: a laboratory for knowledge distillation (teachers, students, losses, data "
        "as plugins; Optuna studies; MLflow tracking).")
    parser.add_argument("--version", action="version", version=f"kdlab {__version__}")
    parser.add_argument("--debug", action="store_true", help=f"print the traceback of an error (also: {ENV_DEBUG}=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_with_parents([debug]))

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

    p = sub.add_parser("layers", help="the configured model's modules: dotted paths, output shapes, parameters "
                       "(for the layers feature-based losses name)")
    p.add_argument("file", help="run config (YAML)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--student", action="store_true", help="the student (the default)")
    which.add_argument("--teacher", action="store_true", help="the teacher")
    _add_overrides(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("study", help="search distillation hyperparameters with Optuna; `study show FILE` summarises, "
                       "`study status FILE` shows progress by machine and device")
    p.add_argument("target", nargs="+", metavar="[show|status] FILE", help="study file, or `show FILE`, `status FILE`")
    _add_overrides(p)
    p.add_argument("--n-trials", type=_positive_int, help="trial budget (default: study.n_trials)")
    p.add_argument("--timeout", type=_positive_seconds, help="stop starting trials after this many seconds")
    p.add_argument("--workers", type=_positive_int, help="worker processes (default: study.workers)")
    p.add_argument("--stack", type=_stack, help="trials each worker trains together as one batched model: a number "
                                               "or auto (default: study.stack)")
    p.add_argument("--storage", help="Optuna storage URL (default: study.storage or a journal file under $KDLAB_HOME)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI")
    p.add_argument("-q", "--quiet", action="store_true", help="no live display")

    p = sub.add_parser("cache", help="list or clear kdlab's caches (teachers, teacher outputs and views, data)")
    p.add_argument("action", choices=["list", "clear"])
    for kind in ("teachers", "outputs", "views", "data"):
        p.add_argument(f"--{kind}", action="store_true", help=f"only the {kind} cache (default: all of them)")
    p = sub.add_parser("compare", help="compare methods each at its tuned best: a study per method, then seeds "
                                       "against the baseline (docs/compare.md)")
    p.add_argument("file", help="run file with a `compare:` section")
    _add_overrides(p)
    p.add_argument("--seeds", type=int, help="retrain each best setting with seeds 0..N-1 (default: compare.seeds)")
    p.add_argument("--n-trials", type=int, help="trials of each method's study (default: compare.n_trials)")
    p.add_argument("--workers", type=int, help="worker processes of each study")
    p.add_argument("--storage", help="Optuna storage URL of the studies")
    p.add_argument("--tracking-uri", help="MLflow tracking URI")
    p.add_argument("--out", help="markdown table file (default: compare.out or $KDLAB_HOME/compare/<name>.md)")
    p.add_argument("-q", "--quiet", action="store_true", help="no live display")
    return parser


def _with_parents(parents: list[argparse.ArgumentParser]) -> type[argparse.ArgumentParser]:
    class Parser(argparse.ArgumentParser):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("parents", parents)
            super().__init__(*args, **kwargs)

    return Parser


def debugging(args: argparse.Namespace | None = None) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get(ENV_DEBUG, "") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from kdlab.errors import KdlabError, Terminated, shorten
    from kdlab.signals import handle_sigterm

    restore = handle_sigterm()
    try:
        if args.command in ("run", "validate"):
            from kdlab.cli.run import main as command
        elif args.command == "plugins":
            from kdlab.cli.plugins import main as command
        elif args.command == "layers":
            from kdlab.cli.layers import main as command
        elif args.command == "compare":
            from kdlab.cli.compare import main as command
        elif args.command == "cache":
            from kdlab.cli.cache import main as command
        else:
            from kdlab.cli.study import main as command
        return command(args)
    except KdlabError as exc:
        _traceback(args, exc)
        print(f"kdlab: error: {shorten(str(exc), MAX_MESSAGE)}", file=sys.stderr)
        return exc.exit_code
    except Terminated:
        print("kdlab: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("kdlab: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug (kdlab's or a plugin's) is still one message, not a traceback
        _traceback(args, exc)
        what = shorten(f"{type(exc).__name__}: {exc}", MAX_MESSAGE)
        hint = "" if debugging(args) else f"; run again with --debug (or {ENV_DEBUG}=1) for the traceback"
        print(f"kdlab: error: unexpected {what} (a bug in kdlab or a plugin: please report it{hint})",
              file=sys.stderr)
        return 1
    finally:
        restore()


def _traceback(args: argparse.Namespace, exc: BaseException) -> None:
    if debugging(args):
        import traceback

        traceback.print_exception(exc, file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
