"""The ``compare:`` section of a run file: which methods, the shared search, the trials per method, the seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kdlab.config import LoadedConfig, Problem, problems_from_validation
from kdlab.errors import ConfigError
from kdlab.suggest import did_you_mean


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MethodSpec(_Strict):
    """One method of the comparison: a loss, its fixed params, and search dimensions of its own."""

    name: str = Field(description="a registered loss (`kdlab plugins --kind loss`)")
    params: dict[str, Any] = Field(default_factory=dict, description="fixed params of the loss (e.g. layer names)")
    search: dict[str, Any] = Field(default_factory=dict, description="extra search dimensions for this method only")
    label: str | None = Field(None, description="the method's name in the table (default: the loss name)")

    @property
    def title(self) -> str:
        return self.label or self.name


class CompareConfig(_Strict):
    name: str | None = Field(None, description="the comparison's name (default: the file's stem); also its MLflow "
                                               "experiment and the prefix of its studies")
    methods: list[str | MethodSpec] = Field(min_length=1, description="losses to compare, by name or as "
                                                                      "{name, params, search, label}")
    search: dict[str, Any] = Field(default_factory=dict, description="dimensions searched for every method (a "
                                                                     "`loss.params.X` key only where the loss has X)")
    declared_space: bool = Field(True, description="also search each loss's own declared space (its plugin's "
                                                   "`search_space`) for params the file does not search")
    n_trials: int = Field(12, gt=0, description="trials of each method's study")
    seeds: int | list[int] = Field(3, description="seeds the best setting is retrained with (N: 0..N-1)")
    baseline: str = Field("ce", description="the loss every method is compared with, on the same seeds")
    study: dict[str, Any] = Field(default_factory=dict, description="other `study:` settings for every method's "
                                                                    "study (sampler, pruner, workers, objective, ...)")
    out: str | None = Field(None, description="markdown table file (default: $KDLAB_HOME/compare/<name>.md)")

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: int | list[int]) -> int | list[int]:
        if isinstance(v, int) and v < 1:
            raise ValueError("expected at least one seed")
        if isinstance(v, list) and (not v or len(set(v)) != len(v)):
            raise ValueError("expected a non-empty list of distinct seeds")
        return v

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)

    def specs(self) -> list[MethodSpec]:
        return [m if isinstance(m, MethodSpec) else MethodSpec(name=m) for m in self.methods]


class LoadedCompare:
    def __init__(self, loaded: LoadedConfig, compare: CompareConfig):
        self.loaded = loaded
        self.compare = compare

    @property
    def name(self) -> str:
        return self.compare.name or Path(self.loaded.name).stem


def load_compare_config(loaded: LoadedConfig) -> LoadedCompare:
    """The validated ``compare:`` section; every method and the baseline must be registered losses."""
    source, raw = loaded.source, loaded.config.compare
    if raw is None:
        raise ConfigError(source.name, [Problem("compare", "this file has no `compare:` section (see "
                                                "docs/compare.md)", has_value=False)])
    try:
        cfg = CompareConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(source.name, problems_from_validation(exc, CompareConfig, prefix=("compare",),
                                                                source=source)) from None
    known = loaded.registry.names("loss")
    problems = []
    for i, spec in enumerate(cfg.specs()):
        if spec.name not in known:
            problems.append(Problem(f"compare.methods.{i}", f"unknown loss{did_you_mean(spec.name, known)} Available "
                                    f"loss components: {', '.join(known)}", spec.name,
                                    line=source.line_of(("compare", "methods", i))))
    if cfg.baseline not in known:
        problems.append(Problem("compare.baseline", f"unknown loss{did_you_mean(cfg.baseline, known)}", cfg.baseline,
                                line=source.line_of(("compare", "baseline"))))
    titles = [s.title for s in cfg.specs()]
    if len(set(titles)) != len(titles):
        problems.append(Problem("compare.methods", "two methods have the same name: give one a `label`", titles))
    if problems:
        raise ConfigError(source.name, problems)
    return LoadedCompare(loaded, cfg)
