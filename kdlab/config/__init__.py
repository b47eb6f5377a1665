"""Run configuration: the YAML file, its pydantic models, and errors that name file, line, key, value and
expectation. The keys documented in ``docs/config.md`` are public interface."""

from kdlab.config.dotted import flatten, parse_override, set_dotted
from kdlab.config.loading import COMPONENT_KINDS, LoadedConfig, derive_config, load_config
from kdlab.config.models import (
    BATCH_OPS,
    DEVICE,
    AssistantConfig,
    AugmentOp,
    BornAgainConfig,
    ComponentConfig,
    ContinualConfig,
    DataConfig,
    InitConfig,
    LoaderConfig,
    OptimizerConfig,
    RunConfig,
    StudentConfig,
    TeacherConfig,
    TeacherTrainingConfig,
    TrackingConfig,
    TrainingConfig,
)
from kdlab.config.problems import problems_from_validation
from kdlab.config.source import Source, dump_yaml
from kdlab.errors import ConfigError, Problem

__all__ = [
    "flatten", "parse_override", "set_dotted", "COMPONENT_KINDS", "LoadedConfig", "derive_config", "load_config",
    "BATCH_OPS", "DEVICE", "AssistantConfig", "AugmentOp", "BornAgainConfig", "ComponentConfig", "ContinualConfig",
    "DataConfig", "InitConfig", "LoaderConfig", "OptimizerConfig",
    "RunConfig", "StudentConfig", "TeacherConfig", "TeacherTrainingConfig", "TrackingConfig", "TrainingConfig",
    "problems_from_validation", "Source", "dump_yaml", "ConfigError", "Problem",
]
