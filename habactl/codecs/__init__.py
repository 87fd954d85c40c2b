"""Decode stages: stored bases -> training images, built from names and configurations."""

from habactl.codecs.base import Stage, StageSpec
from habactl.codecs.errors import CodecError
from habactl.codecs.pipeline import Pipeline
from habactl.codecs.registry import STAGES, PipelineSpec, describe_pipeline, get_stage

__all__ = ["Stage", "StageSpec", "Pipeline", "PipelineSpec", "CodecError", "STAGES",
           "get_stage", "describe_pipeline"]
