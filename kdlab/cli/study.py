"""``kdlab study FILE`` and ``kdlab study show FILE``."""

from __future__ import annotations

import argparse

from kdlab.config import parse_override
from kdlab.errors import KdlabError


def main(args: argparse.Namespace) -> int:
    from kdlab.console import make_console
    from kdlab.study.report import render_summary
    from kdlab.study.runner import StudyOptions, run_study

    target = args.target
    overrides = dict(parse_override(o) for o in args.overrides)
    options = StudyOptions(overrides=overrides, n_trials=args.n_trials, timeout=args.timeout, workers=args.workers,
                           stack=args.stack, storage=args.storage, tracking_uri=args.tracking_uri, quiet=args.quiet)
    console = make_console()
    if target[0] == "show":
        if len(target) != 2:
            raise KdlabError("usage: kdlab study show FILE")
        render_summary(show(target[1], options), console)
        return 0
    if len(target) != 1:
        raise KdlabError("usage: kdlab study FILE  (or: kdlab study show FILE)")
    summary = run_study(target[0], options, console=console)
    render_summary(summary, console)
    return {"SIGTERM": 143, "SIGINT": 130}.get(summary.get("interrupted") or "", 0)


def show(path: str, options) -> dict:
    """The summary of an existing study, read from its Optuna storage; runs nothing, imports no MLflow."""
    import optuna

    from kdlab.study.report import summarize
    from kdlab.study.runner import load, storage_url
    from kdlab.study.storage import make_storage

    lstudy = load(path, options)
    url = storage_url(lstudy, options)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from kdlab import store_checks as stores

    stores.check_storage_url(url)
    with stores.opening(url, "Optuna storage"):
        storage = make_storage(url)
    try:
        study = optuna.load_study(study_name=lstudy.name, storage=storage)
    except KeyError:
        raise KdlabError(f"{path}: no study named {lstudy.name!r} in {url} yet; run `kdlab study {path}` "
                         "first") from None
    return summarize(study)
