"""The knowledge-distillation loss of the teacher-driven paradigm.

``KL(p_T || softmax(z / T)) · T²`` per image, averaged over the batch: `z` the student's
logits, `p_T` the targets at temperature `T`. The T² keeps the gradient's size
independent of T (its gradient with respect to z is ``T · (softmax(z / T) − p_T)``);
with AdamW, the optimiser of the recipe, a constant factor hardly changes the steps.

Targets come in two forms:

- ``loss(logits, targets)``: class probabilities at temperature 1, as an archive stores
  soft labels (or class indices, taken as one-hot). They are softened to T here:
  ``softmax(log p / T)``, which is exactly the teacher's ``softmax(logits / T)`` when
  ``p = softmax(logits)``, so stored probabilities give the published targets. Labels a
  teacher wrote at another temperature T_l (``provenance.teacher.temperature``) are
  brought to T the same way: ``softmax(log p · T_l / T)``.
- ``loss.tempered(logits, p_T)``: targets already at temperature T, e.g. a teacher's
  ``probabilities(x, temperature=T)`` on the augmented batch (online distillation).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from habactl.errors import HabaError


def soften(probabilities: Tensor, temperature: float) -> Tensor:
    """Class probabilities at temperature 1 -> the same distribution at `temperature`
    (zeros stay zero; temperature 1 returns the input)."""
    if temperature == 1:
        return probabilities
    return torch.softmax(torch.log(probabilities) / temperature, dim=1)


class KDLoss(nn.Module):
    """See the module docstring; ``KDLoss(4.0)(logits, targets)`` is a scalar."""

    def __init__(self, temperature: float, labels_temperature: float = 1.0) -> None:
        super().__init__()
        for value in (temperature, labels_temperature):
            if not (math.isfinite(value) and value > 0):
                raise HabaError(f"temperature must be positive, got {value!r}")
        self.temperature = float(temperature)
        self.labels_temperature = float(labels_temperature)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        if targets.dim() == 1:  # class indices: one-hot stays one-hot at any temperature
            return self.tempered(logits, F.one_hot(targets.long(), logits.shape[1]).to(logits))
        ratio = self.temperature / self.labels_temperature
        return self.tempered(logits, soften(targets.to(logits.dtype), ratio))

    def tempered(self, logits: Tensor, targets: Tensor) -> Tensor:
        """The loss against targets already at this loss' temperature."""
        t = self.temperature
        log_q = F.log_softmax(logits / t, dim=1)
        return F.kl_div(log_q, targets.to(log_q.dtype), reduction="batchmean") * (t * t)

    def extra_repr(self) -> str:
        extra = "" if self.labels_temperature == 1 else f", labels at {self.labels_temperature:g}"
        return f"temperature={self.temperature:g}{extra}"


__all__ = ["KDLoss", "soften"]
