"""``kdlab run FILE`` and ``kdlab validate FILE``."""

from __future__ import annotations

import argparse
from typing import Any

from kdlab.config import LoadedConfig, load_config, parse_override
from kdlab.plugins import get_registry


def overrides_of(args: argparse.Namespace) -> dict[str, Any]:
    return dict(parse_override(o) for o in args.overrides)


def load(path: str, overrides: dict[str, Any]) -> LoadedConfig:
    """A run file validated against the installed plugins' components."""
    return load_config(path, registry=get_registry(), overrides=overrides)


def main(args: argparse.Namespace) -> int:
    return validate(args) if args.command == "validate" else run(args)


def validate(args: argparse.Namespace) -> int:
    loaded = load(args.file, overrides_of(args))
    if loaded.config.study is not None:
        from kdlab.study.config import load_study_config

        load_study_config(loaded)
    if loaded.config.compare is not None:
        from kdlab.compare.config import load_compare_config
        from kdlab.compare.runner import method_study
        from kdlab.config import Source, dump_yaml
        from kdlab.study.config import load_study_config

        lc = load_compare_config(loaded)
        for spec in lc.compare.specs():  # each method's study, as `kdlab compare` will write it
            study_file = Source(f"{args.file} (compare method {spec.title})", dump_yaml(method_study(lc, spec)))
            load_study_config(load_config(study_file, registry=loaded.registry))
    cfg = loaded.config
    parts = [f"data={cfg.data.name}", f"student={cfg.student.name}", f"loss={cfg.loss.name}"]
    if cfg.teacher:
        parts.insert(1, f"teacher={cfg.teacher.name}")
    extra = ", with a study" if cfg.study is not None else ""
    extra += f", comparing {len(cfg.compare.get('methods') or [])} methods" if cfg.compare is not None else ""
    print(f"{args.file}: ok ({', '.join(parts)}{extra})")
    return 0


def run(args: argparse.Namespace) -> int:
    overrides = overrides_of(args)
    if args.tracking_uri:
        overrides["tracking.uri"] = args.tracking_uri
    if args.device:
        overrides["training.device"] = args.device
    if args.no_track:
        overrides["tracking.enabled"] = False
    loaded = load(args.file, overrides)

    from kdlab import metrics as names
    from kdlab.console import make_console, metrics_table, show_messages
    from kdlab.modes import Session, run
    from kdlab.observers.progress import ProgressObserver
    from kdlab.store_checks import check_home

    check_home()
    console = make_console()
    progress = ProgressObserver(console, enabled=False if args.quiet else None)
    session = Session(observers=[progress])
    session.tracker(loaded)  # the tracking store is checked and opened now, before any work
    if progress.enabled:
        show_messages(console)
    result = run(loaded, session=session)
    rows = [(k, result.metrics[k]) for k in names.SHOWN if k in result.metrics]
    if not args.quiet:
        cfg = loaded.config
        console.print(metrics_table(f"{loaded.name}: {cfg.student.name} <- "
                                    f"{cfg.teacher.name if cfg.teacher else 'labels'} ({cfg.loss.name})", rows))
        if result.run_id:
            from kdlab.paths import default_tracking_uri

            uri = cfg.tracking.uri or default_tracking_uri()
            console.print(f"MLflow run {result.run_id} in {uri}\n  view: mlflow ui --backend-store-uri {uri}")
    else:
        print(" ".join(f"{k}={v:.4f}" for k, v in rows))
    return 0
