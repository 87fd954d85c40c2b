"""The adversarial contrastive constraint of HaBa (docs/method.md).

A feature extractor F (ConvNet body, at the depth for the image size, + linear head)
persists across iterations and takes one SGD step per iteration on

    ce · CE(F(h_a(b)), y) + supcon · SupCon([F(h_a(b)), F(h_b(b))], y; τ)

(cross-entropy on hallucinated images and a supervised contrastive term that pulls the
features of the same class, in particular of the two hallucinations of one basis,
together), while the bases and hallucinators are charged

    weight · mean_b cos(F(h_a(b)), F(h_b(b)))

which pushes two hallucinations of the same basis apart: the hallucinators must make
views that differ in ways F notices. Each iteration draws one pair of distinct
hallucinators (a, b) for the whole batch, as the reference does.

Both losses come from one forward pass through F: F's gradient is taken first
(``autograd.grad`` w.r.t. F's parameters only), F's step is applied by ``step()``
after the engine has taken the stored tensors' gradient, so both sides see the same F.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from habactl.distill.config import ContrastiveSettings
from habactl.distill.errors import DistillError
from habactl.distill.sets import SyntheticSet
from habactl.nets import seeded as networks
from habactl.nets.registry import arch_name

# The term's settings and their defaults are declared once, torch-free, in ContrastiveSettings.
DEFAULTS: dict[str, Any] = asdict(ContrastiveSettings())


def supcon_loss(
    features: Tensor, labels: Tensor, temperature: float, *, paired: bool = False
) -> Tensor:
    """Supervised contrastive loss (Khosla et al. 2020) over L2-normalised features.

    ``paired``: the caller knows every anchor has a positive (two views of each item), so
    the mean is over all anchors, without reading the device to find those that have one."""
    z = F.normalize(features, dim=1)
    logits = z @ z.T / temperature
    n = z.shape[0]
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (labels.unsqueeze(0) == labels.unsqueeze(1)) & ~self_mask
    count = positive.sum(dim=1)
    per_anchor = -log_prob.masked_fill(~positive, 0.0).sum(dim=1) / count.clamp_min(1)
    if paired:
        return per_anchor.mean()
    has = count > 0
    return per_anchor[has].mean() if bool(has.any()) else features.sum() * 0.0


class AdversarialContrast:
    """The persistent extractor, its optimiser, and the penalty it imposes."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int,
        *,
        device: torch.device,
        generator: torch.Generator,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        unknown = sorted(set(settings or {}) - set(DEFAULTS))
        if unknown:
            raise DistillError(f"contrastive: unknown setting(s) {', '.join(unknown)}")
        self.settings: dict[str, Any] = {**DEFAULTS, **dict(settings or {})}
        s = self.settings
        for key in ("weight", "ce", "supcon", "temperature", "lr", "momentum"):
            s[key] = float(s[key])
            if not s[key] >= 0:
                raise DistillError(f"contrastive: {key} must be >= 0, got {s[key]}")
        if s["temperature"] <= 0:
            raise DistillError("contrastive: temperature must be positive")
        s["arch"] = arch_name(s["arch"], *image_shape[1:])  # "convnet-d4" at 64 px
        self.net = networks.build(
            s["arch"], image_shape, num_classes, device=device, generator=generator, trainable=True
        )
        self.net.train()
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=s["lr"], momentum=s["momentum"])
        self._grads: list[Tensor] | None = None

    def hyperparameters(self) -> dict[str, Any]:
        return dict(self.settings)

    def penalty(
        self, synthetic: SyntheticSet, generator: torch.Generator
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """λ·mean cosine similarity (graph to the stored tensors); prepares F's step."""
        e = synthetic.expansion
        if e < 2:
            raise DistillError("the contrastive term needs at least 2 hallucinators")
        n = synthetic.bases.shape[0]
        pair = torch.randperm(e, generator=generator)[:2]
        batch = int(self.settings["batch"])
        if 0 < batch < n:
            basis = torch.randperm(n, generator=generator)[:batch].sort().values
        else:
            basis = torch.arange(n)
        views = torch.cat(
            [
                synthetic.decode(basis, pair[0].expand(len(basis))),
                synthetic.decode(basis, pair[1].expand(len(basis))),
            ]
        )
        labels = synthetic.item_labels(basis)
        features = networks.embed(self.net, views, networks.chunk_size(views.device, views.shape))
        fa, fb = features.chunk(2)
        similarity = F.cosine_similarity(fa, fb, dim=1).mean()

        s = self.settings
        logits = self.net.classifier(features)
        both = torch.cat([labels, labels])
        ce = F.cross_entropy(logits, both)
        con = supcon_loss(features, both, s["temperature"], paired=True)  # views in pairs
        extractor_loss = s["ce"] * ce + s["supcon"] * con
        params = list(self.net.parameters())
        self._grads = list(torch.autograd.grad(extractor_loss, params, retain_graph=True))
        metrics = {  # on the device: the engine reads them with the loss
            "cos": similarity.detach(),
            "extractor_ce": ce.detach(),
            "extractor_supcon": con.detach(),
        }
        return s["weight"] * similarity, metrics

    def step(self) -> None:
        """Apply the extractor's step prepared by the last ``penalty`` call."""
        if self._grads is None:
            return
        for p, g in zip(self.net.parameters(), self._grads):
            p.grad = g
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._grads = None

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
