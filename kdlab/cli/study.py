"""``kdlab study FILE``, ``kdlab study show FILE`` and ``kdlab study status FILE``."""

from __future__ import annotations

import argparse

from kdlab.config import parse_override
from kdlab.errors import KdlabError


def main(args: argparse.Namespace) -> int:
    from kdlab.console import make_console
    from kdlab.study.report import render_status, render_summary
    from kdlab.study.runner import StudyOptions, run_study

    target = args.target
    overrides = dict(parse_override(o) for o in args.overrides)
    options = StudyOptions(overrides=overrides, n_trials=args.n_trials, timeout=args.timeout, workers=args.workers,
                           stack=args.stack, storage=args.storage, tracking_uri=args.tracking_uri, quiet=args.quiet)
    console = make_console()
    if target[0] in ("show", "status"):
        if len(target) != 2:
            raise KdlabError(f"usage: kdlab study {target[0]} FILE")
        if target[0] == "show":
            render_summary(show(target[1], options), console)
        else:
            render_status(status(target[1], options), console)
        return 0
    if len(target) != 1:
        raise KdlabError("usage: kdlab study FILE  (or: kdlab study show FILE, kdlab study status FILE)")
    summary = run_study(target[0], options, console=console)
    render_summary(summary, console)
    return {"SIGTERM": 143, "SIGINT": 130}.get(summary.get("interrupted") or "", 0)


def _open(path: str, options):
    import optuna

    from kdlab import store_checks as stores
    from kdlab.study.runner import load, storage_url
    from kdlab.study.storage import make_storage

    lstudy = load(path, options)
    url = storage_url(lstudy, options)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    stores.check_storage_url(url)
    with stores.opening(url, "Optuna storage"):
        storage = make_storage(url)
    try:
        return lstudy, optuna.load_study(study_name=lstudy.name, storage=storage)
    except KeyError:
        raise KdlabError(f"{path}: no study named {lstudy.name!r} in {url} yet; run `kdlab study {path}` "
                         "first") from None


def show(path: str, options) -> dict:
    """The summary of an existing study, read from its Optuna storage; runs nothing, imports no MLflow."""
    from kdlab.study.report import summarize

    return summarize(_open(path, options)[1])


def status(path: str, options) -> dict:
    """A study's progress across every process and machine, read from its Optuna storage; changes nothing."""
    from kdlab.study.report import status as read_status

    lstudy, study = _open(path, options)
    return read_status(study, lstudy.study.budget(options.n_trials))
