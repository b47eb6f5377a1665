"""The best trial's student, findable: logged as an MLflow LoggedModel of the trial's run (rebuilt from its
``state_dict`` artifact) with the trial's final metrics and dataset linked to it, and, with
``tracking.register_model: NAME``, registered in the Model Registry under that name with the alias
``tracking.register_alias`` (``champion``), its metrics and the study it came from."""

from __future__ import annotations

import logging
from typing import Any

from kdlab.config import load_config
from kdlab.study.config import LoadedStudy, trial_overrides
from kdlab.tracking import NOTE, Tracker

log = logging.getLogger("kdlab")

#: the best trial's final metrics copied onto its registered version as tags ``metric.<name>``
REGISTERED = ("val_accuracy", "test_accuracy", "agreement", "student_params", "student_flops", "compression_ratio",
              "flops_compression_ratio", "student_latency_ms")


def best_student(study, lstudy: LoadedStudy, tracker: Tracker, best: dict[str, Any], parent_run_id: str) -> str | None:
    """Log (once) and, when asked, register the student of ``best`` (an entry of the summary's ``best``).
    Returns its model id, or ``None`` when the trial has no run."""
    run_id = best["run_id"]
    if not run_id:
        return None
    found = tracker.run_info(run_id)
    outputs = getattr(getattr(found, "outputs", None), "model_outputs", None) or []
    model_id = outputs[0].model_id if outputs else None
    if model_id is None:
        model_id = _log(study, lstudy, tracker, best, found, parent_run_id)
    cfg = lstudy.loaded.config.tracking
    if model_id and cfg.register_model:
        m = best["metrics"]
        tags = {"kdlab.study": lstudy.name, "kdlab.study_run_id": parent_run_id,
                "kdlab.trial_number": best["number"], "kdlab.config_file": lstudy.loaded.name,
                **{f"metric.{k}": m[k] for k in REGISTERED if k in m}}
        what = (f"Best student of study {lstudy.name} (trial {best['number']}): "
                f"val_accuracy {m.get('val_accuracy', float('nan')):.4g}, "
                f"test_accuracy {m.get('test_accuracy', float('nan')):.4g}")
        version = tracker.register_model(cfg.register_model, model_id, alias=cfg.register_alias, run_id=run_id,
                                         tags=tags, description=what + ".")
        tracker.run(parent_run_id).set_tags({"kdlab.registered_model": f"{cfg.register_model}/{version}"})
        log.info("registered %s version %s (alias %s)", cfg.register_model, version, cfg.register_alias)
    return model_id


def _log(study, lstudy: LoadedStudy, tracker: Tracker, best: dict[str, Any], found: Any,
         parent_run_id: str) -> str | None:
    from kdlab.exporting import export_problem
    from kdlab.loading import head
    from kdlab.models import build_model
    from kdlab.session import Session
    from kdlab.weights import load_state_dict_file, load_weights

    run_id = best["run_id"]
    trial = study.trials[best["number"]]
    chosen = {k: decode(lstudy, k, v) for k, v in trial.params.items()}
    loaded = load_config(lstudy.loaded.source, registry=lstudy.loaded.registry,
                         overrides={**lstudy.overrides, **trial_overrides(lstudy, chosen)})
    data = Session().get_data(loaded)
    model = build_model(loaded.components["student"], loaded.params["student"], data)
    local = tracker.download(run_id, "student/state_dict.pt")
    load_weights(model, load_state_dict_file(local, "best trial"), key="best trial", value=run_id)
    run = tracker.run(run_id)
    note = (f"Best student of study [{lstudy.name}]({tracker.run_url(parent_run_id)}): trial {best['number']}, "
            f"{', '.join(f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}' for k, v in chosen.items())}.")
    example = head(data.train.x, 8)  # the first rows (read from disk for streamed data)
    model_id = run.log_model_or_warn(model, "student", example, export_problem=export_problem(model, example),
                                     tags={"kdlab.study": lstudy.name, "kdlab.best": "true",
                                           "kdlab.trial_number": best["number"], NOTE: note})
    if model_id is None:
        return None
    inputs = getattr(getattr(found, "inputs", None), "dataset_inputs", None) or []
    dataset = (inputs[0].dataset.name, inputs[0].dataset.digest) if inputs else None
    curves = {"val_accuracy", "val_loss"}  # per-epoch curves: their kept values are the best_* metrics
    run.link_metrics(model_id, [k for k in best["metrics"] if k not in curves], dataset)
    run.set_tags({"kdlab.best": "true"})
    return model_id


def decode(lstudy: LoadedStudy, key: str, value: Any) -> Any:
    """Categorical choices that are lists travel through Optuna as YAML text."""
    dim = lstudy.study.search.get(key)
    if dim is not None and dim.type == "categorical":
        enc = dim.grid()
        if value in enc:
            return dim.choices[enc.index(value)]
    return value
