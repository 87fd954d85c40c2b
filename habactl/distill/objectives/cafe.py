"""CAFE: condensing a data set by aligning features (Wang et al., CVPR 2022); docs/method.md.

One engine iteration is one *outer step* (one update of the stored tensors) against a
ConvNet that is trained on the synthetic set between outer steps:

- **Layer-wise feature alignment.** Per class, the mean of each block's output (after
  its ReLU, before its pool) over a real batch is matched to the mean over the class's
  synthetic items, and so is the mean final embedding, each by a sum of squared
  differences: ``early_weight`` for every block but the last, ``last_weight`` for the
  last block, ``embedding_weight`` for the embedding (the reference aligns the pooled
  last map and its flattened copy, weight 1 each: 2 here).
- **Discrimination.** The synthetic class means of the embedding serve as a linear
  classifier (logit = inner product) for the real embeddings; its cross-entropy on the
  real batch, averaged per class and summed over classes, weighted by
  ``discrimination_weight`` (0.01 on a sum over 256 real images per class in the
  reference: 2.56 here, so the balance does not change with ``--real-per-class``).
- **Dynamic bi-level schedule** (``schedule: dynamic``). A network is drawn with a probe
  of ``probe_per_class`` real images per class, kept while the network lives. After
  each outer step the network's probe accuracy is read; when the last ``window`` of
  these span less than ``outer_tolerance`` (the network has stopped changing), or after
  ``max_outer`` outer steps, the next iteration draws a new network. Otherwise the
  network trains epoch by epoch on the synthetic set until the probe accuracies of the
  last ``window`` epochs span more than ``inner_tolerance`` (it has moved enough), or
  ``max_inner`` epochs. ``schedule: fixed`` uses dc's counts instead (``outer_loop``,
  ``inner_loop``, by IPC by default).

The accuracy reads are the dynamic schedule's own: its decisions are made on the host,
one read per probe (``runtime.host_values``); the fixed schedule makes none.

Augmentation follows the engine's ``--augment``: ``none`` by default (CAFE); a DSA
strategy gives each class one draw for its real batch and its synthetic items and
augments the inner loop image by image (CAFE+DSA).

Under torchrun the classes are split: a rank aligns its classes and scores its classes'
real images against every class's synthetic mean (the synthetic set is decoded whole on
every rank); the probe covers every class, drawn alike on every rank, so every rank
makes the same schedule decisions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from habactl.distill.errors import DistillError
from habactl.distill.objectives.base import Context, Objective, setting
from habactl.distill.objectives.dc import loops_for_ipc
from habactl.distill.sets import SyntheticSet
from habactl.nets import seeded as networks
from habactl.nets.convnet import ConvNet
from habactl.nets.registry import arch_name
from habactl.runtime import device as runtime
from habactl.runtime.device import to_device

SCHEDULES = ("dynamic", "fixed")


class FeatureAlignment(Objective):
    name = "cafe"
    summary = "layer-wise feature alignment with a discrimination loss"
    samples_real = True

    @dataclass(frozen=True)
    class Settings:
        # real images per class per outer step (reference: 256)
        real_per_class: int = setting(32, "--real-per-class")
        views: int = setting(0, "--views")  # hallucinations per basis per step; 0 = all
        early_weight: float = setting(0.1)  # every block but the last
        last_weight: float = setting(1.0)  # the last block
        embedding_weight: float = setting(2.0)  # the final embedding
        discrimination_weight: float = setting(2.56)  # per class mean cross-entropy
        schedule: str = setting("dynamic")  # or "fixed" (outer_loop, inner_loop)
        # real images per class in a network's probe (reference: 128, drawn per check)
        probe_per_class: int = setting(10)
        window: int = setting(5)  # probe accuracies compared (reference: 10)
        outer_tolerance: float = setting(0.04)  # a new network below this span
        inner_tolerance: float = setting(0.03)  # inner training stops above this span
        max_outer: int = setting(20)  # outer steps per network at most (reference: none)
        max_inner: int = setting(10)  # epochs per inner loop at most (reference: none)
        outer_loop: int | None = setting(None, "--outer-loop")  # fixed schedule only
        inner_loop: int | None = setting(None, "--inner-loop")  # fixed schedule only
        lr_net: float = setting(0.01)  # the network's SGD learning rate (no momentum)
        batch_train: int = setting(256)  # the network's batch size in the inner loop
        net_arch: str = setting("convnet")
        net_width: float = setting(1.0)

    # The reference's image lr and momentum; CAFE without augmentation (CAFE+DSA with one).
    engine_defaults = {"lr_bases": 0.1, "momentum": 0.5, "augment": "none"}

    def __init__(self, context: Context, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(context, settings)
        s = self.draft()
        counts = ("real_per_class", "views", "probe_per_class", "window", "max_outer")
        for key in (*counts, "max_inner", "batch_train"):
            if isinstance(s[key], bool) or not isinstance(s[key], int):
                raise DistillError(f"cafe: {key} must be an integer, got {s[key]!r}")
        for key in ("window", "max_outer", "max_inner", "batch_train"):
            if s[key] < (2 if key == "window" else 1):
                raise DistillError(
                    f"cafe: {key} must be at least {2 if key == 'window' else 1}, got {s[key]}"
                )
        if s["views"] < 0:
            raise DistillError(f"cafe: views must be 0 (all) or more, got {s['views']}")
        for key in (
            "early_weight",
            "last_weight",
            "embedding_weight",
            "discrimination_weight",
            "outer_tolerance",
            "inner_tolerance",
            "lr_net",
            "net_width",
        ):
            value = s[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise DistillError(f"cafe: {key} must be a number >= 0, got {value!r}")
            s[key] = float(value)
        if not (s["lr_net"] > 0 and s["net_width"] > 0):
            raise DistillError("cafe: lr_net and net_width must be positive")
        if s["schedule"] not in SCHEDULES:
            raise DistillError(
                f"cafe: schedule must be 'dynamic' or 'fixed', got {s['schedule']!r}"
            )
        self._resolve_loops(s, context)
        # The probe first: a store reads the last size checked ahead (the real batch's).
        context.real.check_per_class(s["probe_per_class"], "probe_per_class")
        context.real.check_per_class(s["real_per_class"])
        s["net_arch"] = arch_name(s["net_arch"], *context.image_shape[1:])  # as recorded
        self.settings = self.Settings(**s)
        self.net = networks.build(
            s["net_arch"],
            context.image_shape,
            context.num_classes,
            width_mult=s["net_width"],
            device=context.device,
            generator=context.init_generator,
            trainable=True,
        )
        if type(self.net) is not ConvNet:
            raise DistillError(
                f"cafe: net_arch must be a ConvNet (convnet, convnet-d3 ... convnet-d6), "
                f"got {s['net_arch']!r}"
            )
        self.net.train()
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=s["lr_net"])
        self.outer = 0  # outer steps taken with the current network
        self.outer_accuracies: list[float] = []  # the probe accuracy after each of them
        self.probe: Tensor | None = None  # the current network's probe images
        self.probe_labels: Tensor | None = None

    @staticmethod
    def _resolve_loops(s: dict[str, Any], context: Context) -> None:
        given = [k for k in ("outer_loop", "inner_loop") if s[k] is not None]
        if s["schedule"] == "dynamic":
            if given:
                raise DistillError(
                    f"cafe: {given[0]} applies to schedule 'fixed' only (the dynamic "
                    "schedule decides when to stop by probe accuracy)"
                )
            return
        outer, inner = loops_for_ipc(int(getattr(context, "ipc", 1) or 1))
        s["outer_loop"] = outer if s["outer_loop"] is None else s["outer_loop"]
        s["inner_loop"] = inner if s["inner_loop"] is None else s["inner_loop"]
        o, i = s["outer_loop"], s["inner_loop"]
        if not (isinstance(o, int) and o >= 1 and isinstance(i, int) and i >= 0):
            raise DistillError(
                f"cafe: outer_loop must be >= 1 and inner_loop >= 0, got {o!r} and {i!r}"
            )

    # -- the loss -----------------------------------------------------------------------
    def loss(
        self, synthetic: SyntheticSet, generator: torch.Generator
    ) -> tuple[Tensor, dict[str, float]]:
        context = self.context
        per = self.settings.real_per_class
        # Fixed order of draws: network and probe (a new network only), real,
        # hallucinations, augmentation; the same on every rank.
        if self.outer == 0:
            self._new_network(generator)
        ids = context.real.matched()  # this rank's share of the iteration's classes
        real = context.real.sample(per, generator, ids)  # (len(ids), per, C, H, W)
        basis, variant = synthetic.draw(self.settings.views, generator)
        augment = context.augment
        params = [augment.sample(generator) for _ in range(context.num_classes)]
        if not ids:  # more ranks than classes: this one has nothing to add
            return synthetic.bases.sum() * 0.0, {}

        # Real side, without a graph: per class, each layer's mean and the embeddings.
        real_means: list[list[Tensor]] = []
        embeddings = []
        with torch.no_grad():
            for row, c in zip(real, ids):
                layers, embedded = _features(self.net, augment.apply(row, params[c]))
                real_means.append([h.mean(dim=0) for h in (*layers, embedded)])
                embeddings.append(embedded)

        # Synthetic side: every class (their means are the classifier), with a graph.
        syn = synthetic.decode(basis, variant)  # class-sorted
        items = synthetic.class_counts(basis)  # on the host: no device read
        parts = syn.split(items)
        augmented = torch.cat([augment.apply(p, params[c]) for c, p in enumerate(parts)])
        layers, embedded = _features(self.net, augmented)
        syn_means = [
            [h.mean(dim=0) for h in per_class]
            for per_class in zip(*(t.split(items) for t in (*layers, embedded)))
        ]

        weights = self._layer_weights(len(layers) + 1)
        alignment = syn.new_zeros(())
        for row, c in zip(real_means, ids):
            for w, r, s in zip(weights, row, syn_means[c]):
                alignment = alignment + w * (r - s).square().sum()
        centres = torch.stack([means[-1] for means in syn_means])  # (classes, features)
        logits = torch.cat(embeddings) @ centres.t()  # real images of ids x every class
        targets = torch.repeat_interleave(torch.tensor(ids), per)
        cross = F.cross_entropy(logits, to_device(targets, logits.device), reduction="sum")
        discrimination = self.settings.discrimination_weight * cross / per
        return alignment + discrimination, {}

    def _layer_weights(self, count: int) -> list[float]:
        """The weight of each aligned layer: blocks, then the embedding."""
        s = self.settings
        return [s.early_weight] * (count - 2) + [s.last_weight, s.embedding_weight]

    def _new_network(self, generator: torch.Generator) -> None:
        networks.redraw(self.net, generator)
        self.optimizer.state.clear()
        self.outer_accuracies = []
        if self.settings.schedule != "dynamic":
            return
        n = self.settings.probe_per_class
        images = self.context.real.sample(n, generator)  # every class, on every rank
        self.probe = images.flatten(0, 1)
        labels = torch.arange(self.context.num_classes).repeat_interleave(n)
        self.probe_labels = to_device(labels, self.probe.device)

    # -- the inner loop -----------------------------------------------------------------
    def after_step(self, synthetic: SyntheticSet, generator: torch.Generator) -> None:
        s = self.settings
        self.outer += 1
        if s.schedule == "fixed":
            if self.outer >= s.outer_loop:
                self.outer = 0  # the next step draws a new network
                return
            if s.inner_loop:
                images, labels = _synthetic_items(synthetic)
                for _ in range(s.inner_loop):
                    self._train_epoch(images, labels, generator)
            return
        self.outer_accuracies = [*self.outer_accuracies, self._probe_accuracy()][-s.window :]
        settled = _span_below(self.outer_accuracies, s.window, s.outer_tolerance)
        if settled or self.outer >= s.max_outer:
            self.outer, self.outer_accuracies = 0, []  # the next step draws a new network
            return
        images, labels = _synthetic_items(synthetic)
        recent: list[float] = []
        for _ in range(s.max_inner):
            self._train_epoch(images, labels, generator)
            recent = [*recent, self._probe_accuracy()][-s.window :]
            if len(recent) == s.window and max(recent) - min(recent) > s.inner_tolerance:
                break

    def _train_epoch(self, images: Tensor, labels: Tensor, generator: torch.Generator) -> None:
        order = to_device(torch.randperm(images.shape[0], generator=generator), images.device)
        augment = self.context.augment
        for index in order.split(self.settings.batch_train):
            x = images[index]
            if augment.ops:
                x = augment(x, generator, per_sample=True)
            loss = F.cross_entropy(self.net(x), labels[index])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _probe_accuracy(self) -> float:
        """The current network's accuracy on its probe: one read of the device."""
        assert self.probe is not None and self.probe_labels is not None
        with torch.no_grad():
            embedded = networks.embed(self.net, self.probe, _chunk(self))
            logits = self.net.classifier(embedded)
            correct = (logits.argmax(dim=1) == self.probe_labels).float().mean()
        return float(runtime.host_values({"accuracy": correct})["accuracy"])

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "outer": self.outer,
            "outer_accuracies": list(self.outer_accuracies),
            "net": {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "probe": None if self.probe is None else self.probe.detach().cpu().clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.outer = int(state["outer"])
        self.outer_accuracies = [float(a) for a in state["outer_accuracies"]]
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.probe = self.probe_labels = None
        if state["probe"] is not None:
            self.probe = to_device(state["probe"], self.context.device)
            n = self.settings.probe_per_class
            labels = torch.arange(self.context.num_classes).repeat_interleave(n)
            self.probe_labels = to_device(labels, self.context.device)


def _features(net: Any, x: Tensor) -> tuple[list[Tensor], Tensor]:
    """Each block's output (after its ReLU, before its pool) and the final embedding."""
    blocks = []
    h = x
    for layer in net.features:
        h = layer(h)
        if isinstance(layer, nn.ReLU):
            blocks.append(h)
    return blocks, h.flatten(1)


def _synthetic_items(synthetic: SyntheticSet) -> tuple[Tensor, Tensor]:
    """Every item of the synthetic set (each basis through each variant), detached."""
    with torch.no_grad():
        basis, variant = synthetic.draw(0, torch.Generator())  # all: no random draw
        return synthetic.decode(basis, variant).detach(), synthetic.item_labels(basis)


def _span_below(values: list[float], window: int, tolerance: float) -> bool:
    return len(values) == window and max(values) - min(values) < tolerance


def _chunk(objective: FeatureAlignment) -> int:
    return networks.chunk_size(objective.context.device, objective.context.image_shape)
