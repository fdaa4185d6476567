"""The resource API (group scoreops.io, version v1alpha1): one typed source of truth."""

from scoreops.api.base import API_VERSION, GROUP, VERSION, Condition, ObjectMeta
from scoreops.api.common import GenerationSpec, ModelRef, OutputSpec, StrategySpec
from scoreops.api.correctorservice import CorrectorService, CorrectorServiceSpec
from scoreops.api.evalsuite import EvalSuite, EvalSuiteSpec
from scoreops.api.load import (
    KINDS,
    FieldError,
    InvalidResource,
    Resource,
    load_resource,
    load_resources,
    parse_resource,
)
from scoreops.api.scorerun import ScoreRun, ScoreRunSpec

__all__ = [
    "API_VERSION",
    "GROUP",
    "KINDS",
    "VERSION",
    "Condition",
    "CorrectorService",
    "CorrectorServiceSpec",
    "EvalSuite",
    "EvalSuiteSpec",
    "FieldError",
    "GenerationSpec",
    "InvalidResource",
    "ModelRef",
    "ObjectMeta",
    "OutputSpec",
    "Resource",
    "ScoreRun",
    "ScoreRunSpec",
    "StrategySpec",
    "load_resource",
    "load_resources",
    "parse_resource",
]
