"""Optuna user attrs kdlab sets (public interface: ``kdlab study show`` / ``status`` and reviewers read them;
documented in ``docs/studies.md``)."""

#: on every trial
METRICS = "metrics"  # the trial's final metrics
RUN_ID = "mlflow_run_id"  # its MLflow run (recorded as soon as the run starts)
FAIL = "fail_reason"  # why it was pruned or failed
DEVICE = "device"  # the device it trained on
WORKER = "worker"  # the index of the worker process that ran it
STACK = "stack"  # the stack it trained in (worker.stack number), or "alone: <why>" when it could not stack
OWNER = "owner"  # the process that runs it: {host, pid, start, boot, pidns} (kdlab.study.trials)
RETRY_OF = "retry_of"  # on a retry: the number of the stale trial it re-runs
#: the fail reason of a trial whose process was interrupted (it does not count against the budget)
INTERRUPTED = "interrupted"
#: how the fail reason of a stale trial (its owner died) begins; it does not count either, and is retried once
STALE = "stale:"

#: on the study
PARENT = "mlflow_parent_run_id"
EXPERIMENT = "mlflow_experiment"
TRACKING = "mlflow_tracking_uri"
BASELINE = "baseline_metrics"
TEACHER = "teacher_metrics"
SEARCH = "search_space"
DEADLINE = "deadline"  # Unix time after which no process starts a trial (study.timeout), shared by all
