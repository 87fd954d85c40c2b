"""Decode stages: stored bases -> training images, built from names and configurations.

The names below load on first use: `habactl.codecs.spec` (the pure description the
format reader needs) must stay importable without torch.
"""

from __future__ import annotations

from habactl.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "base": ["Stage"],
        "spec": ["StageSpec", "PipelineSpec", "describe_pipeline"],
        "pipeline": ["Pipeline"],
        "errors": ["CodecError"],
        "registry": ["STAGES", "get_stage"],
    },
)
