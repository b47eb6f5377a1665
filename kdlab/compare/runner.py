"""Run a comparison: for each method, a study over its search space (resumed like any study); then its best
setting and the baseline retrained on the same seeds, each a tracked run; then the table (markdown, JSON and an
MLflow parent run ``compare-<name>`` with one child per method, the seed runs nested under it).

Resumable: the studies resume from their storage, and seed runs already done (recorded in
``$KDLAB_HOME/compare/<name>/state.json`` by method, seed and setting) are not run again."""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdlab import paths
from kdlab.compare.config import LoadedCompare, MethodSpec, load_compare_config
from kdlab.compare.report import MethodResult, markdown
from kdlab.config import dump_yaml, load_config
from kdlab.files import atomic_write_text, digest
from kdlab.functional import accuracy
from kdlab.lifecycle import RunOptions
from kdlab.modes import Session, run
from kdlab.plugins import get_registry
from kdlab.study.config import trial_overrides
from kdlab.study.record import decode
from kdlab.study.runner import StudyOptions, run_study
from kdlab.study.runner import load as load_study
from kdlab.teachers.outputs import run_augment
from kdlab.training import predict_split

log = logging.getLogger("kdlab")


@dataclass
class CompareOptions:
    overrides: dict[str, Any] = field(default_factory=dict)
    seeds: int | None = None
    n_trials: int | None = None
    workers: int | None = None
    storage: str | None = None
    tracking_uri: str | None = None
    out: str | None = None
    quiet: bool = False


def load(path: str, options: CompareOptions) -> LoadedCompare:
    overrides = dict(options.overrides)
    if options.tracking_uri:
        overrides["tracking.uri"] = options.tracking_uri
    if options.seeds is not None:
        overrides["compare.seeds"] = options.seeds
    if options.n_trials is not None:
        overrides["compare.n_trials"] = options.n_trials
    return load_compare_config(load_config(path, registry=get_registry(), overrides=overrides))


def method_study(lc: LoadedCompare, spec: MethodSpec) -> dict[str, Any]:
    """The study file of one method: the base config with the method as its loss, and its search space — the
    shared dimensions (loss params only where the loss has them), the loss's declared space, the method's own."""
    cmp = lc.compare
    comp = lc.loaded.registry.get("loss", spec.name)
    own = set(comp.params.model_fields)
    search: dict[str, Any] = {}
    for key, dim in cmp.search.items():
        if not key.startswith("loss.params.") or key.removeprefix("loss.params.") in own:
            search[key] = dim
    if cmp.declared_space:
        for param, dim in (comp.extra.get("search_space") or {}).items():
            key = f"loss.params.{param}"
            if key not in search and param not in spec.params and param in own:
                search[key] = dim
    search.update(spec.search)
    cfg = {k: copy.deepcopy(v) for k, v in lc.loaded.config.resolved_dict().items() if k not in ("compare", "study")}
    cfg["loss"] = {"name": spec.name, "params": dict(spec.params)}
    # the comparison trains its own baseline on its seeds; a study's `ce` run and best-model copy would be spare
    cfg["study"] = {"baseline": False, "log_best_model": False, **copy.deepcopy(cmp.study),
                    "name": f"{lc.name}-{spec.title}", "n_trials": cmp.n_trials, "search": search}
    return cfg


def run_compare(path: str, options: CompareOptions) -> list[MethodResult]:
    lc = load(path, options)
    cmp = lc.compare
    workdir = paths.home() / "compare" / lc.name
    workdir.mkdir(parents=True, exist_ok=True)
    state_file = workdir / "state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    session = Session()
    base = load_config(lc.loaded.source, registry=lc.loaded.registry,
                       overrides={**options.overrides, "tracking.experiment": lc.name,
                                  **({"tracking.uri": options.tracking_uri} if options.tracking_uri else {})})
    tracker = session.tracker(base)
    parent = _find_or_start(tracker, f"compare-{lc.name}", {"kdlab.role": "compare", "kdlab.compare": lc.name})
    baseline = MethodSpec(name=cmp.baseline, label=f"{cmp.baseline} (baseline)")
    results = []
    for spec in [baseline, *cmp.specs()]:
        setting = _tune(lc, spec, workdir, options) if spec is not baseline else ({}, None)
        results.append(_retrain(lc, spec, setting, session, tracker, parent, state, state_file, options))
    table = markdown(lc.name, results, cmp, lc.loaded.name)
    out = Path(options.out or cmp.out or workdir.parent / f"{lc.name}.md")
    atomic_write_text(out, table)
    atomic_write_text(out.with_suffix(".json"), json.dumps([r.as_dict() for r in results], indent=2))
    if parent is not None:
        parent.log_text(table, "compare.md")
        parent.log_text(json.dumps([r.as_dict() for r in results], indent=2), "compare.json")
        parent.set_tags({"mlflow.note.content": table})
        parent.end("FINISHED")
    log.info("wrote %s", out)
    return results


def _tune(lc: LoadedCompare, spec: MethodSpec, workdir: Path, options: CompareOptions) -> tuple[dict, Any]:
    """The method's best setting (config overrides) from its study, run or resumed now; none without a space."""
    cfg = method_study(lc, spec)
    if not cfg["study"]["search"]:
        return {}, None
    study_file = workdir / f"{spec.title}.yaml"
    atomic_write_text(study_file, dump_yaml(cfg))
    study_options = StudyOptions(overrides=dict(options.overrides), workers=options.workers, storage=options.storage,
                                 tracking_uri=options.tracking_uri, quiet=options.quiet)
    log.info("tuning %s: %d trials over %s", spec.title, cfg["study"]["n_trials"], ", ".join(cfg["study"]["search"]))
    summary = run_study(str(study_file), study_options)
    if not summary["best"]:
        return {"__failed__": True}, summary
    lstudy = load_study(str(study_file), study_options)
    best = summary["best"][0]
    chosen = {k: decode(lstudy, k, v) for k, v in best["params"].items()}
    return trial_overrides(lstudy, chosen), summary


def _retrain(lc, spec, setting, session, tracker, parent, state, state_file, options) -> MethodResult:
    overrides, summary = setting
    cmp = lc.compare
    result = MethodResult(spec.title, spec.name, {k: v for k, v in overrides.items() if k != "loss.params"})
    if overrides.get("__failed__"):
        result.note = "every trial of its study failed"
        return result
    child = _find_or_start(tracker, spec.title, {"kdlab.role": "compare-method", "kdlab.compare": lc.name,
                                                 "kdlab.method": spec.title},
                           parent_run_id=parent.run_id if parent else None)
    for seed in cmp.seed_list:
        key = f"{spec.title}|{seed}|{digest(overrides)}"
        if key not in state:
            state[key] = _seed_run(lc, spec, overrides, seed, session, child, options)
            atomic_write_text(state_file, json.dumps(state, indent=2, sort_keys=True))
        result.add(seed, state[key])
    if summary is not None:
        result.trials = sum(summary["states"].values())
    if child is not None:
        child.log_params({k: v for k, v in overrides.items() if k != "loss.params"} | {"loss.name": spec.name})
        child.log_metrics(result.metrics())
        child.end("FINISHED")
    return result


def _seed_run(lc, spec, overrides, seed, session, child, options) -> dict[str, float]:
    loaded = load_config(lc.loaded.source, registry=lc.loaded.registry, overrides={
        **options.overrides, "loss.name": spec.name, "loss.params": dict(spec.params), **overrides,
        "training.seed": seed, "tracking.experiment": lc.name,
        **({"tracking.uri": options.tracking_uri} if options.tracking_uri else {})})
    log.info("%s: seed %d", spec.title, seed)
    res = run(loaded, RunOptions(role="compare", parent_run_id=child.run_id if child else None,
                                 run_name=f"{spec.title}-seed{seed}", log_model=False,
                                 tags={"kdlab.compare": lc.name, "kdlab.method": spec.title}), session)
    out = {"test_accuracy": res.metrics["test_accuracy"], "val_accuracy": res.metrics["val_accuracy"],
           "student_params": res.metrics["student_params"], "run_id": res.run_id,
           "epochs": res.fit.epochs_run if res.fit else 0,
           "time_per_epoch_s": res.metrics["train_time_s"] / max(1, res.fit.epochs_run if res.fit else 1)}
    out["last_epoch_test_accuracy"] = _last_epoch_accuracy(res, session, loaded)
    return out


def _last_epoch_accuracy(res, session, loaded) -> float:
    """Test accuracy of the last epoch's weights (the run keeps the best validation epoch's)."""
    if res.fit is None or res.fit.last_state is None:
        return res.metrics["test_accuracy"]
    student = copy.deepcopy(res.student)
    student.load_state_dict(res.fit.last_state)
    data = session.get_data(loaded)
    device = next(student.parameters()).device
    cfg = loaded.config
    logits = predict_split(student, data.test.x, device, cfg.training.eval_batch_size,
                           augment=run_augment(loaded, data), loader=cfg.data.loader)
    return float(accuracy(logits, data.test.y.to(device)))


def _find_or_start(tracker, name: str, tags: dict[str, str], parent_run_id: str | None = None):
    """The run of this name and tags in the experiment (a resumed comparison), reopened; else a new one."""
    if tracker is None:
        return None
    runs = tracker.find_runs(tags, name=name)
    if runs:
        handle = tracker.run(runs[0])
        handle.reopen()
        return handle
    return tracker.start(name, tags=tags, parent_run_id=parent_run_id)


