"""Optuna user attrs kdlab sets (public interface: ``kdlab study show`` and reviewers read them; documented in
``docs/studies.md``)."""

#: on every trial
METRICS = "metrics"  # the trial's final metrics
RUN_ID = "mlflow_run_id"  # its MLflow run
FAIL = "fail_reason"  # why it was pruned or failed
DEVICE = "device"  # the device it trained on
WORKER = "worker"  # the index of the worker process that ran it
STACK = "stack"  # the stack it trained in (worker.stack number), or "alone: <why>" when it could not stack
#: the fail reason of a trial whose process was interrupted (it does not count against the budget)
INTERRUPTED = "interrupted"

#: on the study
PARENT = "mlflow_parent_run_id"
EXPERIMENT = "mlflow_experiment"
TRACKING = "mlflow_tracking_uri"
BASELINE = "baseline_metrics"
TEACHER = "teacher_metrics"
SEARCH = "search_space"
