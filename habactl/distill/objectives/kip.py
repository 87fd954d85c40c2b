"""Kernel inducing points (KIP, Nguyen, Chen & Lee 2021; docs/method.md).

The synthetic set is the support set of a kernel ridge regression (KRR): it predicts a
batch of real images by

    pred = K(real, syn) (K(syn, syn) + λ I)⁻¹ y_syn,   λ = reg · tr K(syn, syn) / n_syn,

and the loss is ``0.5 · mean((pred − y_real)²)`` over the batch and the classes, with
one-hot labels centred by subtracting 1/classes (as the KIP code does).

The kernel. The published KIP computes the exact NTK/NNGP of infinitely wide networks
(neural-tangents, JAX), whose cost grows with the product of the support and target
sizes times the network's depth and pixels squared: out of reach of a 2-core CPU. Here
the kernel is the random-feature estimate of a ConvNet's NNGP (the RFAD approach, Loo
et al. 2022): the features of ``models`` randomly initialised ConvNet bodies, drawn afresh
every iteration from the objective's stream, give ``K(x, y) = φ(x)·φ(y) / (models · d)``.
Its cost is that of DM: one no-graph forward pass of the real batch and one forward and
backward pass of the support set per network; the kernel matrices themselves are tiny
(n_syn² and n_real · n_syn entries). FRePo's alternative, the features of networks
trained along the way, needs a model pool trained on the synthetic set: more state and
more time on this CPU, for a kernel that drifts with the set.

The regression is solved in float64 (``solve_dtype``), as the KIP code enables 64-bit
floats for it: the hallucinations of one basis are nearly the same image, and with
``reg`` 1e-6 the regularised support kernel of HaBa + IDC at IPC 1 (190 items) has a
condition number of about 6·10⁶ at initialisation, at the edge of float32's precision
(raw images: about 200). The factorisation reports failure in a tensor, never by a host
read: a failed one makes the loss NaN, which the engine stops on.

Under torchrun the real batch's classes are dealt to the ranks (as for dm); every rank
draws the same networks and the same support set, and its loss is its classes' share of
the batch's sum, divided by the whole batch's size, so the ranks' sum is the loss (and
the gradient) of one process.

Labels stay hard: the support labels are the centred one-hot labels of the stored
classes. KIP's best variant also learns them; with learnable soft labels in the
synthetic set, ``y_syn`` would be those (centred) values, and the same regression gives
them their gradient.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from habactl.distill.errors import DistillError
from habactl.distill.objectives.base import Context, Objective, setting
from habactl.distill.sets import SyntheticSet
from habactl.nets import seeded as networks
from habactl.nets.registry import arch_name
from habactl.runtime.device import to_device

SOLVE_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def krr_predict(
    support: Tensor, targets: Tensor, labels: Tensor, reg: float
) -> tuple[Tensor, Tensor]:
    """KRR predictions of ``targets`` from ``support`` with a linear kernel on the given
    features, and the support's kernel matrix.

    support (n, d), targets (t, d), labels (n, classes), all of one dtype; the ridge is
    ``reg`` times the mean of the support kernel's diagonal (the trace over n)."""
    k_ss = support @ support.T
    k_ts = targets @ support.T
    n = k_ss.shape[0]
    ridge = reg * torch.diagonal(k_ss).sum() / n
    eye = torch.eye(n, dtype=k_ss.dtype, device=k_ss.device)
    # cholesky_ex: no host read of the status; a failed factorisation gives NaN below
    factor, _ = torch.linalg.cholesky_ex(k_ss + ridge * eye)
    return k_ts @ torch.cholesky_solve(labels, factor), k_ss


def centred_one_hot(labels: Tensor, classes: int, dtype: torch.dtype) -> Tensor:
    """One-hot rows minus 1/classes (each row sums to zero), as KIP's labels."""
    return F.one_hot(labels, classes).to(dtype) - 1.0 / classes


class KernelInducingPoints(Objective):
    name = "kip"
    summary = "kernel inducing points (kernel ridge regression)"
    samples_real = True

    @dataclass(frozen=True)
    class Settings:
        # real images per class the support set predicts per iteration (KIP: 5,000
        # targets per step, 500 per class on ten classes)
        real_per_class: int = setting(
            32, "--real-per-class", "real images per class predicted per iteration"
        )
        # hallucinations of each basis in the support set per iteration; 0 = all
        views: int = setting(0, None, "hallucinations per basis in the support set; 0 = all")
        # random networks whose features make one iteration's kernel (RFAD: 8)
        models: int = setting(1, None, "random networks averaged into each kernel")
        # the ridge, relative to the mean of the support kernel's diagonal (KIP: 1e-6)
        reg: float = setting(1e-6, None, "ridge relative to tr K(syn, syn) / n")
        embed_arch: str = setting("convnet", None, "the random feature network")
        embed_width: float = setting(1.0, None, "its width multiplier (1.0: 128 channels)")
        solve_dtype: str = setting("float64", None, "precision of the kernel regression")

    # SGD stands in for KIP's Adam (lr 0.01-0.04): the loss is a mean over the batch and
    # the classes (~0.03), so its gradients are small; see docs/objectives.md.
    engine_defaults = {"lr_bases": 2000.0, "momentum": 0.9, "augment": "none"}

    def __init__(self, context: Context, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(context, settings)
        s = self.draft()
        for key in ("real_per_class", "views", "models"):
            if isinstance(s[key], bool) or not isinstance(s[key], int):
                raise DistillError(f"kip: {key} must be an integer, got {s[key]!r}")
        if s["views"] < 0:
            raise DistillError(f"kip: views must be 0 (all) or more, got {s['views']}")
        if s["models"] < 1:
            raise DistillError(f"kip: models must be at least 1, got {s['models']}")
        if isinstance(s["reg"], bool) or not isinstance(s["reg"], (int, float)):
            raise DistillError(f"kip: reg must be a number, got {s['reg']!r}")
        s["reg"] = float(s["reg"])
        if not 0 < s["reg"] < float("inf"):
            raise DistillError(f"kip: reg must be positive, got {s['reg']}")
        if s["solve_dtype"] not in SOLVE_DTYPES:
            raise DistillError(
                f"kip: solve_dtype must be one of {', '.join(SOLVE_DTYPES)}, "
                f"got {s['solve_dtype']!r}"
            )
        s["embed_width"] = float(s["embed_width"])
        context.real.check_per_class(s["real_per_class"])
        s["embed_arch"] = arch_name(s["embed_arch"], *context.image_shape[1:])  # recorded
        self.settings = self.Settings(**s)
        # One network per model: the support side's graph holds each one's weights until
        # the backward pass, so none may be redrawn in place before then. Their initial
        # weights are never used (each iteration redraws them from the objective's
        # stream), so they come from a throwaway generator, not the run's init stream.
        self.nets = [
            networks.build(
                s["embed_arch"],
                context.image_shape,
                context.num_classes,
                width_mult=s["embed_width"],
                device=context.device,
                generator=torch.Generator().manual_seed(0),
                trainable=False,
            ).eval()
            for _ in range(s["models"])
        ]
        self.chunk = networks.chunk_size(context.device, context.image_shape)
        self.dtype = SOLVE_DTYPES[s["solve_dtype"]]

    def _batch_size(self) -> int:
        """Real images in the whole iteration's batch (every rank's share together)."""
        real = self.context.real
        classes = self.context.num_classes
        active = real.classes_per_iteration
        return self.settings.real_per_class * (classes if active is None else min(active, classes))

    def loss(
        self, synthetic: SyntheticSet, generator: torch.Generator
    ) -> tuple[Tensor, dict[str, Tensor]]:
        context = self.context
        classes = context.num_classes
        per = self.settings.real_per_class
        # Fixed order of draws: real indices, support hallucinations, augmentation, then
        # each network (drawn just before its features are computed).
        ids = context.real.matched()  # all classes, unless shared by ranks or subsampled
        real = context.real.sample(per, generator, ids)  # (len(ids), per, C, H, W)
        basis, variant = synthetic.draw(self.settings.views, generator)
        augment = context.augment
        support = synthetic.decode(basis, variant)
        if augment.ops:  # one draw per support image: the set must hold up under it
            support = augment.apply(support, augment.sample(generator, support.shape[0]))
        real = real.reshape(-1, *real.shape[2:])

        syn_parts, real_parts = [], []
        for net in self.nets:
            networks.redraw(net, generator)
            if ids:
                with torch.inference_mode():
                    embedded = networks.embed_no_grad(net, real, self.chunk)
                real_parts.append(embedded.clone())  # usable next to autograd tensors
                syn_parts.append(networks.embed(net, support, self.chunk))
        if not ids:  # more ranks than classes: this one has nothing to add
            return synthetic.bases.sum() * 0.0, {}

        # K(x, y) = φ(x)·φ(y) / (models · d): the features' mean over networks and units
        scale = (self.settings.models * syn_parts[0].shape[1]) ** -0.5
        phi_syn = torch.cat(syn_parts, dim=1).to(self.dtype) * scale
        phi_real = torch.cat(real_parts, dim=1).to(self.dtype) * scale
        y_syn = centred_one_hot(synthetic.item_labels(basis), classes, self.dtype)
        real_labels = torch.tensor(ids).repeat_interleave(per)
        y_real = centred_one_hot(to_device(real_labels, phi_real.device), classes, self.dtype)

        pred, _ = krr_predict(phi_syn, phi_real, y_syn, self.settings.reg)
        # This rank's share of the batch's sum over the whole batch's size: summed over
        # the ranks (or alone), 0.5 · mean squared error, as KIP's loss.
        total = self._batch_size() * classes
        loss = 0.5 * (pred - y_real).square().sum() / total
        correct = (pred.argmax(dim=1) == y_real.argmax(dim=1)).to(torch.float32).mean()
        return loss.to(torch.float32), {"krr_accuracy": correct}
