"""The ``study:`` section of a config file: its pydantic models, validation and the search space."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import ConfigDict, Field, ValidationError, model_validator

from kdlab.config import DEVICE, LoadedConfig, Problem, load_config, problems_from_validation
from kdlab.config.models import MAX_SEED, Float, Int, Strict
from kdlab.errors import ConfigError
from kdlab.metrics import OBJECTIVES

#: the largest trial budget and number of worker processes a study file may ask for
MAX_TRIALS = 1_000_000
MAX_WORKERS = 1024
MAX_STACK = 4096


class _Strict(Strict):
    """Unknown keys, booleans for numbers and non-finite floats (a search bound of ``.inf``) are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class _Dim(_Strict):
    when: dict[str, Any] | None = Field(
        None, description="sample only in trials where these keys took these values (a value or a list of values)")


def _check_range(dim, stepped: bool):
    if not dim.low < dim.high:
        raise ValueError(f"low ({dim.low}) must be below high ({dim.high})")
    if dim.log and dim.low <= 0:
        raise ValueError(f"log scale needs low > 0 (got {dim.low})")
    if dim.log and stepped:
        raise ValueError("log and step cannot be combined")
    return dim


class FloatDim(_Dim):
    type: Literal["float"]
    low: Float
    high: Float
    log: bool = False
    step: Float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check(self):
        return _check_range(self, stepped=self.step is not None)

    def suggest(self, trial, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=self.log, step=self.step)

    def grid(self) -> list[Any]:
        if self.step is None:
            raise ValueError("the grid sampler needs `step` on float dimensions")
        n = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        return [round(self.low + i * self.step, 12) for i in range(n)]


class IntDim(_Dim):
    type: Literal["int"]
    low: Int
    high: Int
    log: bool = False
    step: Int = Field(1, gt=0)

    @model_validator(mode="after")
    def _check(self):
        return _check_range(self, stepped=self.step != 1)

    def suggest(self, trial, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, log=self.log, step=self.step)

    def grid(self) -> list[Any]:
        return list(range(self.low, self.high + 1, self.step))


class CategoricalDim(_Dim):
    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)

    def suggest(self, trial, name: str) -> Any:
        # Optuna stores categorical choices as None/bool/int/float/str; lists (e.g. hidden widths) go as YAML text
        encoded = [c if isinstance(c, (type(None), bool, int, float, str)) else _yaml(c) for c in self.choices]
        value = trial.suggest_categorical(name, encoded)
        return self.choices[encoded.index(value)]

    def grid(self) -> list[Any]:
        return [c if isinstance(c, (type(None), bool, int, float, str)) else _yaml(c) for c in self.choices]


def _yaml(v: Any) -> str:
    import yaml

    return yaml.safe_dump(v, default_flow_style=True).strip()


Dimension = Annotated[Union[FloatDim, IntDim, CategoricalDim], Field(discriminator="type")]


class Objective(_Strict):
    metric: str = "val_accuracy"
    direction: Literal["maximize", "minimize"] = "maximize"


class SamplerConfig(_Strict):
    name: Literal["tpe", "random", "grid", "cmaes", "nsga2"] = "tpe"
    seed: Int | None = Field(0, ge=0, le=MAX_SEED - MAX_WORKERS, description="sampler seed (worker i uses seed + i)")
    n_startup_trials: Int = Field(8, ge=0, description="TPE/CMA-ES random trials before modelling")


class PrunerConfig(_Strict):
    name: Literal["median", "hyperband", "none"] = "median"
    n_startup_trials: Int = Field(5, ge=0, description="median: trials before pruning starts")
    n_warmup_steps: Int = Field(5, ge=0, description="median: epochs before a trial can be pruned")
    min_resource: Int = Field(3, ge=1, description="hyperband: minimum epochs")
    stack_peers: bool = Field(True, description="median, stacked trials: also prune a member whose best value is "
                                                "worse than the median of its stack's members and the completed "
                                                "trials at the same epoch (docs/studies.md)")



class StudyConfig(_Strict):
    name: str | None = Field(None, description="study name (default: the file's stem); also the MLflow experiment")
    n_trials: Int = Field(20, gt=0, le=MAX_TRIALS,
                          description="total trials of the study (a resumed study runs the rest)")
    timeout: Float | None = Field(None, gt=0, description="seconds (from the command's start) after which no new "
                                                         "trial starts")
    search: dict[str, Dimension] = Field(default_factory=dict)
    objective: Objective | Annotated[list[Objective], Field(min_length=1)] = Field(
        default_factory=Objective, description="{metric, direction} or a non-empty list of them")
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)
    storage: str | None = Field(None, description="Optuna storage URL or journal file (default: "
                                                  "$KDLAB_HOME/optuna.journal)")
    heartbeat_interval: Int = Field(30, ge=1, le=3600, description="seconds between the heartbeats of a running "
                                    "trial (server RDB storages: PostgreSQL, MySQL)")
    grace_period: Int = Field(120, ge=2, le=86400, description="seconds without a heartbeat after which a running "
                              "trial's machine is taken for dead: the trial fails and is retried once")
    devices: Literal["auto", "cpu"] | Annotated[list[str], Field(min_length=1)] = "auto"
    workers: Annotated[Int, Field(ge=1, le=MAX_WORKERS)] | Literal["auto"] = Field(
        "auto", description="worker processes; auto: one per GPU, or one per CPU core")
    stack: Annotated[Int, Field(ge=1, le=MAX_STACK)] | Literal["auto"] = Field(
        1, description="trials each worker trains together as one batched model (docs/studies.md, stacked trials); "
                       "auto: 16 on a CPU for small students, as many as fit on a GPU; 1: one at a time")
    start_method: Literal["auto", "spawn"] = Field(
        "auto", description="how worker processes start; auto: fork single-threaded CPU workers on Linux, else spawn")
    baseline: bool = Field(True, description="also train the student with `ce` (no distillation) for comparison")
    log_best_model: bool = Field(True, description="log the best trial's student as an MLflow LoggedModel linked to "
                                                   "its metrics (and register it: tracking.register_model)")
    declared_space: bool = Field(True, description="when loss.name is searched: also search each chosen loss's own "
                                                   "declared space (its plugin's search_space) for params the file "
                                                   "does not search (not with the grid sampler)")

    @model_validator(mode="after")
    def _check_heartbeat(self):
        # a grace period within one beat would fail live trials between two of their heartbeats
        if self.grace_period < 2 * self.heartbeat_interval:
            raise ValueError(f"grace_period ({self.grace_period}) must be at least twice heartbeat_interval "
                             f"({self.heartbeat_interval})")
        return self

    @property
    def objectives(self) -> list[Objective]:
        return self.objective if isinstance(self.objective, list) else [self.objective]

    def budget(self, asked: int | None = None) -> int:
        """The study's trial budget (``--n-trials`` or ``n_trials``); with the grid sampler at most the number of
        grid points, each run once."""
        n = asked or self.n_trials
        if self.sampler.name == "grid" and self.search:
            size = math.prod(len(d.grid()) for d in self.search.values())
            n = min(n, size)
        return n



class LoadedStudy:
    def __init__(self, loaded: LoadedConfig, study: StudyConfig, overrides: dict[str, Any] | None = None):
        self.loaded = loaded
        self.study = study
        #: the config overrides every run of the study applies (``--set``, the study's experiment)
        self.overrides = dict(overrides or {})

    @property
    def name(self) -> str:
        return self.study.name or Path(self.loaded.name).stem

    @property
    def conditional(self) -> bool:
        return "loss.name" in self.study.search or any(d.when for d in self.study.search.values())


def load_study_config(loaded: LoadedConfig) -> LoadedStudy:
    """Validate the ``study:`` section of a loaded run config, including every search key against the config."""
    source = loaded.source
    raw = loaded.config.study
    if raw is None:
        raise ConfigError(source.name, [Problem("study", "this file has no `study:` section (see docs/studies.md)",
                                                has_value=False)])
    from pydantic import TypeAdapter

    problems: list[Problem] = []
    raw = dict(raw)
    search_raw = raw.pop("search", None) or {}
    if not isinstance(search_raw, dict):
        raise ConfigError(source.name, [Problem("study.search",
                                                "expected a mapping of dotted config keys to dimensions",
                                                search_raw, line=source.line_of(("study", "search")))])
    try:
        study = StudyConfig.model_validate(raw)
        settings_valid = True
    except ValidationError as exc:
        problems += problems_from_validation(exc, StudyConfig, prefix=("study",), source=source)
        study = StudyConfig()
        settings_valid = False
    adapter = TypeAdapter(Dimension)
    for key, spec in search_raw.items():
        try:
            study.search[key] = adapter.validate_python(spec)
        except ValidationError as exc:
            for p in problems_from_validation(exc, prefix=("study", "search", key), source=source):
                # drop the union tag pydantic puts in the location (".float", ".int", ".categorical")
                k = p.key
                for tag in (".float", ".int", ".categorical"):
                    if k.startswith(f"study.search.{key}{tag}"):
                        k = f"study.search.{key}" + k[len(f"study.search.{key}{tag}"):]
                problems.append(Problem(k, p.message, spec if k == f"study.search.{key}" else p.value,
                                        line=source.line_of(("study", "search", key))))
    loss_choices = None
    if "loss.name" in study.search:
        dim = study.search["loss.name"]
        if not isinstance(dim, CategoricalDim):
            problems.append(Problem("study.search.loss.name",
                                    "loss.name is searched as `type: categorical` with choices", dim.type))
        else:
            loss_choices = dim.choices
            if study.sampler.name == "grid":
                study.declared_space = False  # a grid is the file's dimensions only
            elif study.declared_space:
                for name in loss_choices:
                    if name in loaded.registry.names("loss"):
                        declared_space(loaded, name)  # a plugin's bad declaration fails here, at validation
    for key, dim in study.search.items():
        line = source.line_of(("study", "search", key))
        for cond_key in (dim.when or {}):
            if cond_key not in study.search:
                problems.append(Problem(f"study.search.{key}.when", f"condition on {cond_key!r}, which is not searched",
                                        cond_key, line=line))
        problems += _check_key(loaded, key, dim, loss_choices, line)
    for obj in study.objectives:
        if obj.metric.startswith("test_"):
            problems.append(Problem("study.objective.metric", "test metrics are recorded but never drive the search; "
                                    "use a validation metric such as val_accuracy", obj.metric))
        elif obj.metric not in OBJECTIVES:
            problems.append(Problem("study.objective.metric", f"expected one of {', '.join(OBJECTIVES)}", obj.metric))
    if len(study.objectives) > 1 and study.sampler.name == "cmaes":
        problems.append(Problem("study.sampler.name",
                                "CMA-ES is single-objective; use tpe or nsga2 for several objectives", "cmaes"))
    if study.sampler.name == "grid":
        for key, dim in study.search.items():
            try:
                dim.grid()
            except ValueError as exc:
                problems.append(Problem(f"study.search.{key}", str(exc), dim.model_dump()))
    if settings_valid and not search_raw and study.n_trials > 1:
        problems.append(Problem("study.search", f"the search space is empty: all {study.n_trials} trials would train "
                                "the same config; add dimensions (docs/studies.md) or set n_trials: 1", {},
                                line=source.line_of(("study", "search")) or source.line_of(("study",))))
    if isinstance(study.devices, list):
        for i, d in enumerate(study.devices):
            if not DEVICE.match(d) or d == "auto":
                problems.append(Problem(f"study.devices.{i}", "expected cpu, cuda or cuda:N", d))
    if problems:
        raise ConfigError(source.name, problems)
    return LoadedStudy(loaded, study)


def _check_key(loaded: LoadedConfig, key: str, dim: Any, loss_choices: list[Any] | None,
               line: int | None) -> list[Problem]:
    """A search key must be a config key: try its values on the base config and validate."""
    if key.startswith("study.") or key.startswith("tracking."):
        return [Problem(f"study.search.{key}", "study and tracking settings cannot be searched", key, line=line)]
    values = dim.choices if isinstance(dim, CategoricalDim) else [dim.low, dim.high]
    contexts: list[dict[str, Any]] = [{}]
    if key.startswith("loss.params.") and loss_choices is not None:
        # a loss param is searched only in trials whose loss has it: it must exist in at least one of them
        param = key.split(".", 2)[2]
        owners = []
        for name in loss_choices:
            try:
                comp = (loaded.components["loss"] if name == loaded.config.loss.name
                        else loaded.registry.get("loss", name))
            except LookupError:
                continue
            if param in comp.params.model_fields:
                owners.append(name)
        if not owners:
            return [Problem(f"study.search.{key}", f"none of the searched losses ({', '.join(map(str, loss_choices))}) "
                            f"has a param {param!r}", key, line=line)]
        contexts = [{"loss.name": o, "loss.params": {}} for o in owners[:1]]
    out = []
    for ctx in contexts:
        for v in values[:4]:
            if key == "loss.name":  # a loss chosen by the search starts from its own defaults
                ctx = {"loss.params": dict(loaded.config.loss.params) if v == loaded.config.loss.name else {}}
            try:
                load_config(loaded.source, registry=loaded.registry, overrides={**ctx, key: v})
            except ConfigError as exc:
                bad = [p for p in exc.problems]
                msg = "; ".join(f"{p.key}: {p.message}" for p in bad)
                return [Problem(f"study.search.{key}", f"value {v!r} does not make a valid config ({msg})", v,
                                line=line)]
    return out


def active(dim: Any, chosen: dict[str, Any]) -> bool:
    if not dim.when:
        return True
    for k, want in dim.when.items():
        wants = want if isinstance(want, list) else [want]
        if chosen.get(k) not in wants:
            return False
    return True


def sample(study: LoadedStudy, trial) -> dict[str, Any]:
    """Sample the search space for one trial: ``loss.name`` first, then everything active in that trial.

    When ``loss.name`` is searched, ``loss.params.X`` is sampled only in trials whose loss has a param ``X``, and
    the loss's other params take their defaults (not the base config's, which belong to another loss) — or, with
    ``declared_space``, are sampled from the space the loss's plugin declares for them.
    """
    space = study.study.search
    chosen: dict[str, Any] = {}
    order = sorted(space, key=lambda k: (k != "loss.name", bool(space[k].when), k))
    loss_params = None
    for key in order:
        dim = space[key]
        if not active(dim, chosen):
            continue
        if key.startswith("loss.params.") and "loss.name" in chosen:
            if loss_params is None:
                loss_params = set(study.loaded.registry.get("loss", chosen["loss.name"]).params.model_fields)
            if key.split(".", 2)[2] not in loss_params:
                continue
        chosen[key] = dim.suggest(trial, key)
    if "loss.name" in chosen and study.study.declared_space:
        for key, dim in declared_space(study.loaded, chosen["loss.name"]).items():
            if key not in space:
                chosen[key] = dim.suggest(trial, key)
    return chosen


def declared_space(loaded: LoadedConfig, loss: str) -> dict[str, Any]:
    """The search space the plugin of loss ``loss`` declares for its params, as ``loss.params.<param>`` dimensions;
    a declaration that is not a valid dimension is the plugin's error."""
    from pydantic import TypeAdapter

    from kdlab.errors import PluginError

    comp = loaded.registry.get("loss", loss)
    out = {}
    for param, spec in (comp.extra.get("search_space") or {}).items():
        try:
            if param not in comp.params.model_fields:
                raise ValueError(f"{param!r} is not a param of the loss")
            out[f"loss.params.{param}"] = TypeAdapter(Dimension).validate_python(spec)
        except (ValidationError, ValueError) as exc:
            raise PluginError(f"loss {comp.name!r} from {comp.origin} declares a search space entry {param!r} = "
                              f"{spec!r} that is not a valid dimension: {str(exc).splitlines()[0]}") from None
    return out


def trial_overrides(study: LoadedStudy, chosen: dict[str, Any]) -> dict[str, Any]:
    """Config overrides for one trial. A loss chosen by the search starts from its own defaults (plus the base
    config's params when it is the base config's loss)."""
    out: dict[str, Any] = {}
    base = study.loaded.config.loss
    if "loss.name" in chosen:
        out["loss.params"] = dict(base.params) if chosen["loss.name"] == base.name else {}
    out.update(chosen)
    return out
