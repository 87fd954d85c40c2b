"""A bound on how far one optimiser step may move each group of learned tensors.

Trajectory matching differentiates through tens of unrolled student steps. Its gradients
w.r.t. the stored tensors and the learned learning rate vary over three or more orders
of magnitude from one iteration to the next (which expert, which start epoch, how far
that expert moved in M epochs), and a single step at the reference learning rates can
move the bases a thousand times their own size or push the learned lr through zero. No
fixed learning rate suits every iteration, so before the optimiser's step each group's
gradient is scaled down, where needed, until ``lr · ‖g‖ ≤ fraction · ‖p‖`` (``‖p‖`` the
group's current norm: the bases, the hallucinators' weights, the learned lr). Small
gradients pass unchanged, so where the learning rates are right nothing changes; with
SGD momentum μ, a step moves a group by at most ``fraction / (1 − μ)`` of its norm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

# A group whose norm is zero (nothing to compare a step with) may still move this far.
_FLOOR = 1e-12


@torch.no_grad()
def bound_steps(groups: Sequence[dict[str, Any]], fraction: float) -> list[float]:
    """Scale the ``.grad`` of every optimiser group in place so that its SGD step
    ``lr · ‖g‖`` is at most ``fraction`` of the group's norm (a group's own ``max_step``
    entry, when it has one, replaces ``fraction``; None there leaves it unbounded).
    Returns each group's factor (1.0 where the gradient was left alone)."""
    factors = []
    for group in groups:
        params = [p for p in group["params"] if p.grad is not None]
        limit = group.get("max_step", fraction)
        if not params or not limit:
            factors.append(1.0)
            continue
        grad_norm = float(
            torch.stack([p.grad.double().square().sum() for p in params]).sum().sqrt()
        )
        norm = float(torch.stack([p.double().square().sum() for p in params]).sum().sqrt())
        step = float(group["lr"]) * grad_norm
        allowed = limit * max(norm, _FLOOR)
        # A non-finite gradient is left as it is: the engine's finiteness checks report it.
        if not math.isfinite(step) or step <= allowed:
            factors.append(1.0)
            continue
        factor = allowed / step
        for p in params:
            p.grad.mul_(factor)
        factors.append(factor)
    return factors
