"""The errors a distillation run can end with; each is one line for the CLI."""

from __future__ import annotations

from habactl.errors import HabaError


class DistillError(HabaError):
    """A distillation that cannot start or cannot go on because of its inputs."""


class NonFiniteLoss(DistillError):
    """The loss became NaN or Inf; nothing was written and the last good checkpoint stays."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C: a checkpoint of the last finished iteration was written (if any)."""

    def __init__(self, iteration: int, checkpoint: str | None) -> None:
        super().__init__(iteration, checkpoint)
        self.iteration = iteration
        self.checkpoint = checkpoint
