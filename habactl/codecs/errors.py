"""The one exception for every problem with a decode stage or pipeline."""

from __future__ import annotations

from habactl.errors import HabaError, quote


class CodecError(HabaError):
    """A stage configuration, shape, parameter set or input is not valid.

    Messages name the stage and the key, e.g.
    ``stage 'hallucinate': configuration 'count' must be 1..4096, got 0``.
    Raised from a pipeline, it is prefixed ``pipeline[i]: ``; ``detail`` and ``index``
    keep the two apart for callers that add their own context (the format reader).
    """

    def __init__(self, detail: str, index: int | None = None) -> None:
        self.detail = detail
        self.index = index
        super().__init__(detail if index is None else f"pipeline[{index}]: {detail}")


__all__ = ["CodecError", "quote"]
