"""A student trained by unrolled SGD steps on the synthetic set, differentiated through.

Objectives that learn the synthetic set by what a network trained on it becomes (DD's
bilevel loss) take T steps θ_{t+1} = θ_t − α_t g_t(θ_t), where g_t is the gradient of
the training loss on step t's synthetic batch, then score θ_T with a loss L(θ_T), and
need ∂L/∂(everything the steps read): the stored tensors, learned labels and the
learning rates α_t.

``unroll="full"`` keeps the whole graph (a forward, a backward and their double backward
per step: memory grows with T). ``unroll="recompute"`` keeps only each step's θ_t (one
flat vector) and walks the steps backwards by hand, rebuilding one step's graph at a
time: with the adjoint a = ∂L/∂θ_{t+1},

    ∂L/∂θ_t = a − α_t (∂g_t/∂θ_t)ᵀ a,   ∂L/∂s += −α_t (∂g_t/∂s)ᵀ a,   ∂L/∂α_t = −g_tᵀ a

for every stored tensor s. Peak memory is one step's graph whatever T; the price is one
more forward and backward per step. Trajectory matching walks its steps the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

UNROLLS = ("recompute", "full")

# step_gradient(t, θ, graph): g_t at θ. With graph=False no graph to the stored tensors
# is needed (decode them under no_grad); with graph=True the result must be
# differentiable w.r.t. θ and the stored tensors (create_graph=True).
StepGradient = Callable[[int, Tensor, bool], Tensor]


class Precomputed(torch.autograd.Function):
    """A scalar whose gradients w.r.t. ``inputs`` were computed beforehand."""

    @staticmethod
    def forward(ctx: Any, value: Tensor, grads: tuple[Tensor, ...], *inputs: Tensor) -> Tensor:
        ctx.grads = grads
        return value.detach().clone()

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Any, ...]:
        return (None, None, *[grad_output * g for g in ctx.grads])


def unrolled_loss(
    start: Tensor,
    lrs: Tensor,
    step_gradient: StepGradient,
    final_loss: Callable[[Tensor], Tensor],
    stored: Sequence[Tensor],
    unroll: str = "recompute",
) -> Tensor:
    """L(θ_T) after ``len(lrs)`` SGD steps from ``start``, as a scalar whose gradients
    reach ``lrs`` (a (T,) tensor, which may itself have a graph, e.g. a softplus) and
    every tensor of ``stored`` that the steps read."""
    steps = int(lrs.shape[0])
    if unroll == "full":
        theta = start.detach().requires_grad_(True)
        for t in range(steps):
            theta = theta - lrs[t] * step_gradient(t, theta, True)
        return final_loss(theta)
    if unroll != "recompute":
        raise ValueError(f"unroll must be one of {', '.join(UNROLLS)}, got {unroll!r}")
    rates = lrs.detach()
    thetas = []
    theta = start.detach()
    for t in range(steps):  # forward: no graph to the stored tensors, one step at a time
        current = theta.requires_grad_(True)
        thetas.append(current.detach())
        theta = (current - rates[t] * step_gradient(t, current, False)).detach()
    last = theta.requires_grad_(True)
    loss = final_loss(last)
    adjoint = torch.autograd.grad(loss, last)[0]
    totals = [torch.zeros_like(s) for s in stored]
    lr_grads = []
    for t in reversed(range(steps)):  # backward, one step's graph at a time
        current = thetas[t].requires_grad_(True)
        g = step_gradient(t, current, True)
        inner = (g * adjoint).sum()
        parts = torch.autograd.grad(inner, [current, *stored], allow_unused=True)
        lr_grads.append(-inner.detach())
        for total, part in zip(totals, parts[1:]):
            if part is not None:
                total.sub_(rates[t] * part)
        adjoint = adjoint - rates[t] * parts[0]
        current.requires_grad_(False)
    lr_grad = torch.stack(lr_grads[::-1]).reshape(lrs.shape)
    return Precomputed.apply(loss.detach(), (lr_grad, *totals), lrs, *stored)
