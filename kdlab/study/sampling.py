"""The Optuna sampler and pruner a study's ``sampler:`` and ``pruner:`` sections ask for."""

from __future__ import annotations


def build_sampler(study_cfg, index: int = 0):
    """The configured sampler; worker ``index`` seeds it with ``seed + index`` so workers sample apart (the grid
    sampler excepted: its workers share the grid's order and take its points in turn)."""
    import optuna

    s = study_cfg.sampler
    seed = None if s.seed is None else s.seed + index
    multi = len(study_cfg.objectives) > 1
    if s.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.name == "grid":
        # one seed for every worker: the seed shuffles the grid's order, and worker i's grid point k must be
        # everyone's grid point k, or two workers run the same point and skip another
        return _locked_grid_sampler({k: d.grid() for k, d in study_cfg.search.items()}, s.seed)
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


def _locked_grid_sampler(space, seed):
    """Optuna's grid sampler, picking each trial's grid point under a lock shared by this machine's workers: two
    workers starting trials at the same moment would otherwise both take the same unvisited point (one point run
    twice, another skipped)."""
    import optuna

    from kdlab import paths
    from kdlab.files import file_lock

    class LockedGridSampler(optuna.samplers.GridSampler):
        def before_trial(self, study, trial):
            with file_lock(paths.home() / "locks" / "grid-sampler.lock"):
                super().before_trial(study, trial)

    return LockedGridSampler(space, seed=seed)
