"""Run configuration: the YAML file, its pydantic models, and the errors that name file, key, value and expectation.

The keys documented in ``docs/config.md`` are public interface. A component (``data``, ``teacher``, ``student``,
``loss``) is ``{name, params}``; its params are validated by the pydantic model its plugin registered.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kdlab.errors import ConfigError, PluginError, Problem
from kdlab.registry import Registry, UnknownComponent


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class OptimizerConfig(Strict):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0, description="learning rate")
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD only")
    scheduler: Literal["none", "cosine", "step", "onecycle"] = Field(
        "none", description="learning-rate schedule: cosine/step per epoch, onecycle per step (peak at lr)")
    step_size: int = Field(30, gt=0, description="epochs between decays, for scheduler: step")
    gamma: float = Field(0.1, gt=0, le=1, description="decay factor, for scheduler: step")


class ComponentConfig(Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("params", mode="before")
    @classmethod
    def _none_is_empty(cls, v: Any) -> Any:
        return {} if v is None else v


class DataConfig(ComponentConfig):
    seed: int = Field(0, description="seed of the data split (kept fixed across trials)")


class TeacherTrainingConfig(Strict):
    epochs: int = Field(30, gt=0)
    batch_size: int = Field(128, gt=0)
    seed: int = Field(0, description="the teacher's own seed, independent of the student's")
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)


class InitConfig(Strict):
    """Start a model from a source model's weights (transfer-learning initialisation)."""

    checkpoint: str | None = Field(None, description="a state_dict file of the source model (loaded with "
                                                     "weights_only)")
    mlflow_uri: str | None = Field(None, description="an MLflow model URI or a `.pt` state_dict artifact of the "
                                                     "source model")
    freeze: list[str] = Field(default_factory=list, description="dotted module paths whose params are frozen")
    strict: bool = Field(False, description="require every key to match (else load the matching ones)")


class TeacherConfig(ComponentConfig):
    checkpoint: str | None = Field(None, description="load weights from this state_dict file (weights_only)")
    mlflow_uri: str | None = Field(None, description="load from an MLflow model URI, e.g. runs:/<id>/teacher")
    training: TeacherTrainingConfig = Field(default_factory=TeacherTrainingConfig)
    init: InitConfig | None = Field(None, description="when kdlab trains the teacher: start it from a source model's "
                                                      "weights, optionally freezing modules (transfer learning)")


class StudentConfig(ComponentConfig):
    init: InitConfig | None = None


_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")


class TrainingConfig(Strict):
    epochs: int = Field(20, gt=0)
    batch_size: int = Field(128, gt=0)
    seed: int = 0
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    use_transfer: bool = Field(True, description="train on the transfer split through the teacher's outputs")
    keep_best: bool = Field(True, description="restore the weights of the best validation epoch at the end")
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = Field(False, description="torch.compile the student")
    threads: int | None = Field(None, gt=0, description="torch CPU threads (default: torch's choice)")
    eval_batch_size: int = Field(4096, gt=0)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not _DEVICE.match(v):
            raise ValueError("expected auto, cpu, cuda or cuda:N")
        return v


class TrackingConfig(Strict):
    enabled: bool = True
    uri: str | None = Field(None, description="MLflow tracking URI (default: sqlite file under KDLAB_HOME)")
    experiment: str | None = Field(None, description="MLflow experiment (default: kdlab-<data name>)")
    run_name: str | None = None
    log_model: bool = Field(True, description="log the student with mlflow.pytorch.log_model")
    flush_every_s: float = Field(15.0, ge=0, description="per-epoch metrics are sent in batches this often")


class AssistantConfig(ComponentConfig):
    """A teacher assistant (Mirzadeh et al. 2020): teacher -> assistant -> student, each stage its own run."""

    epochs: int | None = Field(None, gt=0, description="epochs of the assistant's distillation (default: "
                                                       "training.epochs)")


class ContinualConfig(Strict):
    """Learn the data's tasks one after another (``Data.tasks``); see :mod:`kdlab.continual`."""

    method: Literal["lwf", "finetune"] = Field("lwf", description="lwf: Learning without Forgetting (Li and Hoiem "
                                               "2017); finetune: no distillation (the forgetting baseline)")
    temperature: float = Field(2.0, gt=0, description="temperature of the old-output distillation (paper: 2)")
    old_weight: float = Field(1.0, ge=0, description="lambda_o, weight of the old-task distillation term (paper: 1)")
    first_task_epochs: int | None = Field(None, gt=0, description="epochs on the first task (default: "
                                                                  "training.epochs)")


class RunConfig(Strict):
    data: DataConfig
    teacher: TeacherConfig | None = None
    student: StudentConfig
    loss: ComponentConfig = Field(default_factory=lambda: ComponentConfig(name="kd"))
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    study: dict[str, Any] | None = Field(None, description="study settings, read by `kdlab study`")
    assistant: AssistantConfig | None = Field(None, description="distil through a teacher assistant "
                                                                "(kdlab.progressive)")
    continual: ContinualConfig | None = Field(None, description="learn the data's tasks in sequence "
                                                                "(kdlab.continual)")

    def resolved_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=False)


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------


class Source:
    """A YAML document and where it came from, so that errors can name the file and line of a key."""

    def __init__(self, name: str, text: str):
        self.name = name
        self.text = text
        try:
            self.node = yaml.compose(text, Loader=yaml.SafeLoader)
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark else None
            raise ConfigError(name, [Problem("", f"not valid YAML: {getattr(exc, 'problem', exc)}", has_value=False, line=line)]) from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(name, [Problem("", "expected a mapping of config sections", data)])
        self.data: dict[str, Any] = data

    @classmethod
    def from_path(cls, path: str | Path) -> Source:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise ConfigError(str(path), [Problem("", f"cannot read file: {exc.strerror}", has_value=False)]) from None
        return cls(str(path), text)

    def line_of(self, loc: tuple[Any, ...] | list[Any]) -> int | None:
        node, line = self.node, None
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                nxt = None
                for k, v in node.value:
                    if k.value == str(part):
                        nxt, line = v, k.start_mark.line + 1
                        break
                if nxt is None:
                    return line
                node = nxt
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                return line
        return line


def problems_from_validation(exc: ValidationError, prefix: tuple[Any, ...] = (), source: Source | None = None) -> list[Problem]:
    out = []
    for err in exc.errors(include_url=False):
        loc = prefix + tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        key = ".".join(str(p) for p in loc)
        typ = err["type"]
        if typ == "extra_forbidden":
            msg = "unknown key" + _known_keys_hint(exc, err)
        elif typ == "missing":
            msg = "required key is missing"
        else:
            msg = "expected " + _expectation(err)
        has_value = typ != "missing"
        out.append(Problem(key, msg, err.get("input"), has_value=has_value, line=source.line_of(loc) if source else None))
    return out


def _known_keys_hint(exc: ValidationError, err: dict[str, Any]) -> str:
    model = _model_for(exc)
    if model is None:
        return ""
    sub: Any = model
    for part in err["loc"][:-1]:
        field = getattr(sub, "model_fields", {}).get(part) if isinstance(part, str) else None
        if field is None:
            return ""
        sub = _inner_model(field.annotation)
        if sub is None:
            return ""
    keys = sorted(getattr(sub, "model_fields", {}))
    if not keys:
        return " (this section takes no keys)"
    import difflib

    close = difflib.get_close_matches(str(err["loc"][-1]), keys, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} Known keys: {', '.join(keys)}"


def _model_for(exc: ValidationError) -> type[BaseModel] | None:
    return _TITLES.get(exc.title)


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        m = _inner_model(arg)
        if m is not None:
            return m
    return None


def _expectation(err: dict[str, Any]) -> str:
    msg = err["msg"]
    ctx = err.get("ctx") or {}
    typ = err["type"]
    if typ.startswith("literal_error"):
        return f"one of {ctx.get('expected', '')}"
    if typ == "value_error":
        text = msg.removeprefix("Value error, ")
        return text.removeprefix("expected ") if text.startswith("expected ") else f"a valid value: {text}"
    # pydantic's "Input should be a valid number" -> "a valid number"
    return re.sub(r"^Input should (be )?", "", msg)


_TITLES: dict[str, type[BaseModel]] = {}


def register_title(model: type[BaseModel]) -> None:
    _TITLES[model.__name__] = model


for _m in (RunConfig,):
    register_title(_m)


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise KeyError(key)
        node = nxt
    node[parts[-1]] = value


def get_dotted(data: dict[str, Any], key: str, default: Any = None) -> Any:
    node: Any = data
    for p in key.split("."):
        if not isinstance(node, dict) or p not in node:
            return default
        node = node[p]
    return node


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` from ``--set``; the value is parsed as YAML (so ``0.5`` is a float, ``[64, 32]`` a list)."""
    if "=" not in text:
        raise ConfigError("--set", [Problem(text, "expected KEY=VALUE, e.g. loss.params.temperature=4", text)])
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys matching the YAML: ``{"loss": {"params": {"alpha": 0.5}}}`` -> ``{"loss.params.alpha": 0.5}``."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        if not data and prefix:
            return {}
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    else:
        out[prefix] = data
    return out


class LoadedConfig:
    """A validated run config, with each component's resolved params model instance."""

    def __init__(self, config: RunConfig, source: Source, components: dict[str, Any], params: dict[str, BaseModel]):
        self.config = config
        self.source = source
        self.components = components  # kind -> kdlab.registry.Component
        self.params = params  # kind -> params model instance

    @property
    def name(self) -> str:
        return self.source.name


COMPONENT_KINDS = {"data": "data", "teacher": "teacher", "student": "student", "loss": "loss"}


def load_config(
    path_or_source: str | Path | Source,
    registry: Registry | None = None,
    overrides: dict[str, Any] | None = None,
) -> LoadedConfig:
    """Read, validate and resolve a run config. Raises :class:`ConfigError` listing every problem found."""
    source = path_or_source if isinstance(path_or_source, Source) else Source.from_path(path_or_source)
    data = copy.deepcopy(source.data)
    for key, value in (overrides or {}).items():
        try:
            set_dotted(data, key, value)
        except KeyError:
            raise ConfigError(source.name, [Problem(key, "cannot set this key: a parent key is not a mapping", value)]) from None
    if registry is None:
        from kdlab.plugins import get_registry

        registry = get_registry()
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as exc:
        problems = problems_from_validation(exc, source=source)
        # list the component problems too (an unknown loss name, a bad param), not only the structural ones
        bad = {p.key for p in problems}
        for section, kind in COMPONENT_KINDS.items():
            raw = data.get(section)
            if not (isinstance(raw, dict) and isinstance(raw.get("name"), str)
                    and isinstance(raw.get("params") or {}, dict)):
                continue
            if any(k == section or k.startswith((f"{section}.name", f"{section}.params")) for k in bad):
                continue
            problems += _resolve_component(section, kind, raw["name"], raw.get("params") or {}, registry, source)[0]
        raise ConfigError(source.name, _from_overrides(problems, overrides)) from None
    problems = []
    components: dict[str, Any] = {}
    params: dict[str, BaseModel] = {}
    for section, kind in COMPONENT_KINDS.items():
        comp_cfg = getattr(cfg, section)
        if comp_cfg is None:
            continue
        found, comp, p = _resolve_component(section, kind, comp_cfg.name, comp_cfg.params, registry, source)
        problems += found
        if comp is None or p is None:
            continue
        components[kind] = comp
        params[kind] = p
        comp_cfg.params = p.model_dump(mode="json")
    if cfg.assistant is not None:
        # the assistant is a student architecture: its name and params are checked here, not at its stage's start
        found, _, p = _resolve_component("assistant", "student", cfg.assistant.name, cfg.assistant.params, registry,
                                         source)
        problems += found
        if p is not None:
            cfg.assistant.params = p.model_dump(mode="json")
        if cfg.teacher is None:
            problems.append(Problem("assistant", "a teacher assistant needs a `teacher:` section to distil from",
                                    cfg.assistant.name, line=source.line_of(("assistant",))))
    if cfg.teacher is not None and cfg.teacher.checkpoint and cfg.teacher.mlflow_uri:
        problems.append(Problem("teacher.checkpoint", "give either teacher.checkpoint or teacher.mlflow_uri, not both", cfg.teacher.checkpoint, line=source.line_of(("teacher", "checkpoint"))))
    if problems:
        raise ConfigError(source.name, _from_overrides(problems, overrides))
    return LoadedConfig(cfg, source, components, params)


def _resolve_component(section: str, kind: str, name: str, values: dict[str, Any], registry: Registry,
                       source: Source) -> tuple[list[Problem], Any, BaseModel | None]:
    """The registered component ``name`` of ``kind`` and its validated params, or the problems found."""
    try:
        comp = registry.get(kind, name)
    except UnknownComponent as exc:
        return [Problem(f"{section}.name", _unknown_message(exc), name, line=source.line_of((section, "name")))], None, None
    except PluginError as exc:  # a name two plugins registered: unusable until one is disabled
        return [Problem(f"{section}.name", str(exc), name, line=source.line_of((section, "name")))], None, None
    try:
        return [], comp, comp.validate_params(values)
    except ValidationError as exc:
        problems = []
        for prob in problems_from_validation(exc, prefix=(section, "params"), source=source):
            if prob.message.startswith("unknown key"):
                known = sorted(comp.params.model_fields)
                import difflib

                close = difflib.get_close_matches(prob.key.rsplit(".", 1)[-1], known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                prob = Problem(prob.key, f"unknown param of {kind} {comp.name!r}{hint} Known params: {', '.join(known) or 'none'}", prob.value, line=prob.line)
            problems.append(prob)
        return problems, comp, None


def _from_overrides(problems: list[Problem], overrides: dict[str, Any] | None) -> list[Problem]:
    """A problem with a value given by ``--set`` names the override, not the file line the value replaced."""
    out = []
    for prob in problems:
        key = next((k for k in overrides or {} if prob.key == k or prob.key.startswith(k + ".")), None)
        if key is not None:
            prob = Problem(prob.key, f"{prob.message} [from --set {key}]", prob.value, has_value=prob.has_value)
        out.append(prob)
    return out


def _unknown_message(exc: UnknownComponent) -> str:
    import difflib

    close = difflib.get_close_matches(exc.name, exc.available, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    listing = ", ".join(exc.available) if exc.available else "none installed"
    return f"unknown {exc.kind}{hint} Available {exc.kind} components: {listing}"


def dump_yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
