"""A study's trials in its Optuna storage: which count against the budget, and failing those that an interrupted
process left ``RUNNING`` (through the storage's public API)."""

from __future__ import annotations

from kdlab.study import attrs


def finished_count(study) -> int:
    """Trials that count against the budget: complete, pruned, or failed for a reason other than interruption."""
    from optuna.trial import TrialState

    n = 0
    for t in study.get_trials(deepcopy=False):
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            n += 1
        elif t.state == TrialState.FAIL and t.user_attrs.get(attrs.FAIL) != attrs.INTERRUPTED:
            n += 1
    return n


def fail_stale_trials(study, storage) -> list[int]:
    """Mark the trials left ``RUNNING`` by an interrupted process as ``FAIL`` (reason: interrupted) in ``storage``,
    the storage object ``study`` was opened with; returns their numbers."""
    from optuna.trial import TrialState

    study_id = storage.get_study_id_from_name(study.study_name)
    stale = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        storage.set_trial_user_attr(trial_id, attrs.FAIL, attrs.INTERRUPTED)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        stale.append(t.number)
    return stale
