"""``kdlab compare FILE``."""

from __future__ import annotations

import argparse

from kdlab.config import parse_override


def main(args: argparse.Namespace) -> int:
    from kdlab.compare.runner import CompareOptions, run_compare
    from kdlab.console import make_console, show_messages

    if not args.quiet:
        show_messages(make_console())
    options = CompareOptions(overrides=dict(parse_override(o) for o in args.overrides), seeds=args.seeds,
                             n_trials=args.n_trials, workers=args.workers, storage=args.storage,
                             tracking_uri=args.tracking_uri, out=args.out, quiet=args.quiet)
    for r in run_compare(args.file, options):
        m = r.metrics()
        if not m:
            print(f"{r.title}: {r.note or 'not run'}")
            continue
        gain = f", gain {100 * r.gain[0]:+.2f} pts" if r.gain else ""
        print(f"{r.title}: test accuracy {100 * m['test_accuracy_mean']:.2f} ± "
              f"{100 * m['test_accuracy_std']:.2f}{gain}")
    return 0
