"""The one exception for every problem with a decode stage or pipeline."""

from __future__ import annotations

from habactl.errors import HabaError


class CodecError(HabaError):
    """A stage configuration, shape, parameter set or input is not valid.

    Messages name the stage and the key, e.g.
    ``stage 'hallucinate': configuration 'count' must be 1..4096, got 0``.
    """


def quote(value: object, limit: int = 60) -> str:
    """Quote untrusted text for a message: repr escapes control characters and long
    values are cut, so a hostile manifest cannot flood or corrupt a terminal."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
