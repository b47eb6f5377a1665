"""Reading a run config: the YAML file, ``--set`` overrides, the pydantic models, and each component's params
validated by the model its plugin registered in the :class:`~kdlab.registry.Registry` passed in."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from kdlab.config.dotted import set_dotted
from kdlab.config.models import BATCH_OPS, RunConfig
from kdlab.config.problems import problems_from_validation
from kdlab.config.source import Source, dump_yaml
from kdlab.errors import ConfigError, PluginError, Problem
from kdlab.registry import Component, Registry, UnknownComponent
from kdlab.suggest import did_you_mean

#: config sections that name a component, and the component kind each names
COMPONENT_KINDS = {"data": "data", "teacher": "teacher", "student": "student", "loss": "loss"}
#: sections of a run config that describe a chain or a schedule, not one run; dropped from derived configs
COMPOUND_SECTIONS = ("study", "compare", "assistant", "continual", "born_again")


class LoadedConfig:
    """A validated run config, with each component resolved in the registry it was validated against."""

    def __init__(self, config: RunConfig, source: Source, components: dict[str, Component],
                 params: dict[str, BaseModel], registry: Registry):
        self.config = config
        self.source = source
        self.components = components  # kind -> Component
        self.params = params  # kind -> params model instance
        self.registry = registry

    @property
    def name(self) -> str:
        return self.source.name


def load_config(path_or_source: str | Path | Source, *, registry: Registry,
                overrides: dict[str, Any] | None = None) -> LoadedConfig:
    """Read, validate and resolve a run config. Raises :class:`ConfigError` listing every problem found."""
    source = path_or_source if isinstance(path_or_source, Source) else Source.from_path(path_or_source)
    data = copy.deepcopy(source.data)
    for key, value in (overrides or {}).items():
        try:
            set_dotted(data, key, value)
        except KeyError:
            raise ConfigError(source.name, [Problem(key, "cannot set this key: a parent key is not a mapping",
                                                    value)]) from None
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as exc:
        problems = problems_from_validation(exc, RunConfig, source=source)
        # list the component problems too (an unknown loss name, a bad param), not only the structural ones
        bad = {p.key for p in problems}
        for section, kind in COMPONENT_KINDS.items():
            raw = data.get(section)
            if not (isinstance(raw, dict) and isinstance(raw.get("name"), str)
                    and isinstance(raw.get("params") or {}, dict)):
                continue
            if any(k == section or k.startswith((f"{section}.name", f"{section}.params")) for k in bad):
                continue
            problems += _resolve(section, kind, raw["name"], raw.get("params") or {}, registry, source)[0]
        raise ConfigError(source.name, _from_overrides(problems, overrides)) from None
    problems = []
    components: dict[str, Component] = {}
    params: dict[str, BaseModel] = {}
    for section, kind in COMPONENT_KINDS.items():
        comp_cfg = getattr(cfg, section)
        if comp_cfg is None:
            continue
        found, comp, p = _resolve(section, kind, comp_cfg.name, comp_cfg.params, registry, source)
        problems += found
        if comp is None or p is None:
            continue
        components[kind] = comp
        params[kind] = p
        comp_cfg.params = p.model_dump(mode="json")
    if cfg.assistant is not None:
        # the assistant is a student architecture: its name and params are checked here, not at its stage's start
        found, _, p = _resolve("assistant", "student", cfg.assistant.name, cfg.assistant.params, registry, source)
        problems += found
        if p is not None:
            cfg.assistant.params = p.model_dump(mode="json")
        if cfg.teacher is None:
            problems.append(Problem("assistant", "a teacher assistant needs a `teacher:` section to distil from",
                                    cfg.assistant.name, line=source.line_of(("assistant",))))
    if cfg.teacher is not None and cfg.teacher.mode == "views":
        mixing = [op.op for op in cfg.data.augment if op.op in BATCH_OPS]
        if mixing:
            problems.append(Problem("teacher.mode", f"views cannot replay {mixing[0]} (it mixes the examples of each "
                                    "batch, which cached views cannot know): use teacher.mode: live", "views",
                                    line=source.line_of(("teacher", "mode"))))
    modes = [m for m in ("assistant", "continual", "born_again") if getattr(cfg, m) is not None]
    if len(modes) > 1:
        problems.append(Problem(modes[1], f"one run mode per run: this file has {' and '.join(modes)}", modes,
                                line=source.line_of((modes[1],))))
    loss = components.get("loss")
    if cfg.teacher is None and cfg.continual is None and cfg.born_again is None and loss is not None \
            and _needs_teacher(loss):
        problems.append(Problem("loss.name", f"loss {loss.name!r} distils from a teacher: add a `teacher:` section "
                                "(or use a loss that needs none, such as ce)", loss.name,
                                line=source.line_of(("loss", "name"))))
    if cfg.teacher is not None and cfg.teacher.checkpoint and cfg.teacher.mlflow_uri:
        problems.append(Problem("teacher.checkpoint", "give either teacher.checkpoint or teacher.mlflow_uri, not both",
                                cfg.teacher.checkpoint, line=source.line_of(("teacher", "checkpoint"))))
    if problems:
        raise ConfigError(source.name, _from_overrides(problems, overrides))
    return LoadedConfig(cfg, source, components, params, registry)


def derive_config(loaded: LoadedConfig, changes: dict[str, Any], label: str) -> LoadedConfig:
    """``loaded`` with top-level sections replaced by ``changes`` (``None`` removes one) and its chain sections
    dropped, validated again against the same registry; errors name ``label`` (e.g.
    ``run.yaml (loss.params.teachers.1)``)."""
    data = {k: v for k, v in loaded.config.resolved_dict().items() if k not in COMPOUND_SECTIONS}
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return load_config(Source(label, dump_yaml(data)), registry=loaded.registry)


def _resolve(section: str, kind: str, name: str, values: dict[str, Any], registry: Registry,
             source: Source) -> tuple[list[Problem], Component | None, BaseModel | None]:
    """The registered component ``name`` of ``kind`` and its validated params, or the problems found."""
    try:
        comp = registry.get(kind, name)
    except UnknownComponent as exc:
        listing = ", ".join(exc.available) if exc.available else "none installed"
        message = f"unknown {kind}{did_you_mean(name, exc.available, 0.5)} Available {kind} components: {listing}"
        return [Problem(f"{section}.name", message, name, line=source.line_of((section, "name")))], None, None
    except PluginError as exc:  # a name two plugins registered: unusable until one is disabled
        return [Problem(f"{section}.name", str(exc), name, line=source.line_of((section, "name")))], None, None
    try:
        return [], comp, comp.validate_params(values)
    except ValidationError as exc:
        problems = []
        for prob in problems_from_validation(exc, comp.params, prefix=(section, "params"), source=source):
            if prob.message.startswith("unknown key"):
                known = sorted(comp.params.model_fields)
                hint = did_you_mean(prob.key.rsplit(".", 1)[-1], known)
                prob = Problem(prob.key, f"unknown param of {kind} {comp.name!r}{hint} Known params: "
                                         f"{', '.join(known) or 'none'}", prob.value, line=prob.line)
            problems.append(prob)
        return problems, comp, None


def _needs_teacher(comp: Component) -> bool:
    """Whether the loss component reads a teacher, as far as can be told without building it: a
    :class:`kdlab.Loss` subclass registered as its own factory (or a factory annotated to return one) says so with
    ``uses_teacher``; any other factory is asked when the run builds it."""
    import inspect

    cls = comp.factory
    if not isinstance(cls, type):
        try:
            cls = inspect.signature(comp.factory, eval_str=True).return_annotation
        except Exception:  # noqa: BLE001 - an annotation that does not resolve tells nothing
            return False
    return isinstance(cls, type) and getattr(cls, "uses_teacher", None) is True


def _from_overrides(problems: list[Problem], overrides: dict[str, Any] | None) -> list[Problem]:
    """A problem with a value given by ``--set`` names the override, not the file line the value replaced."""
    out = []
    for prob in problems:
        key = next((k for k in overrides or {} if prob.key == k or prob.key.startswith(k + ".")), None)
        if key is not None:
            prob = Problem(prob.key, f"{prob.message} [from --set {key}]", prob.value, has_value=prob.has_value)
        out.append(prob)
    return out
