"""Optuna studies over distillation settings: ``kdlab study FILE``.

A study file is a run config plus a ``study:`` section (search space, objective, sampler, pruner, budget, storage,
devices and workers). See ``docs/studies.md``.
"""
