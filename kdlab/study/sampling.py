"""The Optuna sampler and pruner a study's ``sampler:`` and ``pruner:`` sections ask for."""

from __future__ import annotations


def build_sampler(study_cfg, index: int = 0):
    """The configured sampler; worker ``index`` seeds it with ``seed + index`` so workers sample apart."""
    import optuna

    s = study_cfg.sampler
    seed = None if s.seed is None else s.seed + index
    multi = len(study_cfg.objectives) > 1
    if s.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.name == "grid":
        return optuna.samplers.GridSampler({k: d.grid() for k, d in study_cfg.search.items()}, seed=seed)
    if s.name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=s.n_startup_trials)
    if s.name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    conditional = "loss.name" in study_cfg.search or any(d.when for d in study_cfg.search.values())
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.n_startup_trials, multivariate=True,
                                      group=conditional and not multi, constant_liar=True)


def build_pruner(study_cfg):
    import optuna

    p = study_cfg.pruner
    if p.name == "none" or len(study_cfg.objectives) > 1:
        return optuna.pruners.NopPruner()  # Optuna cannot prune multi-objective studies
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=p.min_resource)
    return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
