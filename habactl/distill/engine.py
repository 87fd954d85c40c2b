"""The distillation loop: one loop for every pipeline and every objective.

It learns the stored tensors of a decode pipeline (bases at any resolution, hallucinator
weights) against one objective, optionally with HaBa's adversarial contrastive term,
and writes the result as a .haba archive. Around the loop: the budget planner, HaBa's
initialisation, checkpoints (periodic, on Ctrl-C, ``resume``), a non-finite-loss stop,
progress and a metrics log.

Reproducibility: every random draw comes from an explicit CPU ``torch.Generator`` (one
stream for initialisation, one for the objective, one for the contrastive term), never
from the global RNG, so a seed gives the same run on any device, and the generator
states in a checkpoint make a resumed run continue the very same random sequence.
"""

from __future__ import annotations

import math
import os
import signal
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from habactl.distill import checkpoint as ckpt
from habactl.distill.config import DistillConfig
from habactl.distill.contrastive import AdversarialContrast
from habactl.distill.errors import DistillError, Interrupted, NonFiniteLoss
from habactl.distill.objectives import Context, Objective, get_objective
from habactl.distill.planner import Plan, plan_pipeline, preset_pipeline
from habactl.distill.progress import MetricsLog, Reporter
from habactl.distill.sets import RealSet, RealSide, SyntheticSet
from habactl.distill.stepbound import bound_steps
from habactl.errors import HabaError
from habactl.runtime import device as runtime
from habactl.runtime.device import derived_generator
from habactl.runtime.distributed import SINGLE, Collective

INITS = ("real", "noise")


@dataclass
class DistillResult:
    path: Path
    plan: Plan
    iterations: int
    resumed_from: int
    seconds: float
    final_loss: float | None
    device: str


def stream(seed: int, name: str) -> torch.Generator:
    """An independent CPU generator per purpose, derived from the run's seed."""
    return derived_generator("distill", seed, name)


def class_spread(images: Tensor, labels: Tensor, num_classes: int) -> list[float]:
    """Mean squared distance of a class's images to their class mean."""
    flat = images.reshape(images.shape[0], -1).double()
    out = []
    for k in range(num_classes):
        members = flat[labels == k]
        out.append(
            float((members - members.mean(0)).square().sum(1).mean()) if len(members) else 0.0
        )
    return out


def _check_number(
    name: str, value: float, *, low: float = 0.0, strict: bool = True, high: float | None = None
) -> float:
    value = float(value)
    if (
        not math.isfinite(value)
        or (value <= low if strict else value < low)
        or (high is not None and value >= high)
    ):
        bound = f"> {low}" if strict else f">= {low}"
        if high is not None:
            bound += f" and < {high}"
        raise DistillError(f"{name} must be {bound}, got {value}")
    return value


def check_config(c: DistillConfig) -> None:
    """The engine's own settings (the planner, the objective and the contrastive term
    check theirs)."""
    if c.init not in INITS:
        raise DistillError(f"unknown init {c.init!r} (known: {', '.join(INITS)})")
    if c.iterations < 0:
        raise DistillError(f"--iterations must be 0 or more, got {c.iterations}")
    if c.checkpoint_every < 1:
        raise DistillError(f"--checkpoint-every must be at least 1, got {c.checkpoint_every}")
    if c.classes_per_iteration is not None and c.classes_per_iteration < 1:
        raise DistillError(
            f"--classes-per-iteration must be at least 1, got {c.classes_per_iteration}"
        )
    if c.labels is not None:
        _check_labels(c)
    _check_number("--lr-bases", c.lr_bases)
    _check_number("--lr-hallucinators", c.lr_hallucinators, strict=False)
    _check_number("--momentum", c.momentum, strict=False, high=1.0)
    _check_number("hallucinator noise", c.hallucinator_noise, strict=False)


def _check_labels(c: DistillConfig) -> None:
    """--labels: a form the format knows, and a teacher to compute the labels with."""
    from habactl.format.labels import parse_form

    try:
        parse_form(c.labels)
    except HabaError as error:
        raise DistillError(f"--labels: {error}") from None
    if not c.objective_settings.get("teacher"):
        raise DistillError(
            "--labels needs a teacher: use it with --objective sre2l or rded and --teacher "
            "FILE; to give another objective's archive soft labels, run habactl relabel on it"
        )
    if c.objective_settings.get("learn_labels") is True:
        raise DistillError("--labels and learned labels (learn_labels) cannot both label the bases")


def pipeline_entries(
    c: DistillConfig,
    image_shape: tuple[int, int, int] | None = None,
    classes: int | None = None,
) -> list[dict[str, Any]]:
    """The run's decode pipeline as manifest entries: `pipeline`, else the codec preset;
    then a frequency stage (`c.frequency`, sized for what the rest decodes from; with
    per-class masks for `classes` classes) and a quantize stage (`c.quantize`) in front."""
    if c.pipeline is not None:
        entries = [dict(entry) for entry in c.pipeline]
    else:
        entries = preset_pipeline(
            c.codec,
            factor=c.factor,
            hallucinators=c.hallucinators,
            arch=c.hallucinator_arch,
            hidden=c.hidden,
            kernel=c.kernel,
        )
        for entry in entries:  # the preset's other stage options (none by default)
            entry["configuration"].update(c.stage_options.get(entry["name"], {}))
        unknown = sorted(set(c.stage_options) - {entry["name"] for entry in entries})
        if unknown:
            raise DistillError(
                f"stage options for {unknown[0]}: the codec {c.codec} has no such stage"
            )
    if c.frequency is not None:
        if image_shape is None:
            raise DistillError("internal: a frequency stage needs the image shape")
        from habactl.distill.planner import base_shape_for

        _, height, width = base_shape_for(entries, image_shape)
        sizes: dict[str, Any] = {"height": height, "keep": int(c.frequency), "width": width}
        if c.frequency_mask != "shared":  # a shared mask's entry is as it always was
            if classes is None:
                raise DistillError("internal: per-class frequency masks need the class count")
            sizes.update({"mask": c.frequency_mask, "classes": int(classes)})
        entries.insert(0, {"name": "frequency", "version": 1, "configuration": sizes})
    if c.quantize is not None:
        configuration = {"dtype": c.quantize, "granularity": c.quantize_granularity}
        entries.insert(0, {"name": "quantize", "version": 1, "configuration": configuration})
    return entries


def _codec_label(c: DistillConfig) -> str:
    """The preset's name, with the bases' stored dtype when they are quantised."""
    per_class = "-per-class" if c.frequency_mask == "per-class" else ""
    label = c.codec if c.frequency is None else f"{c.codec}+frequency{per_class}"
    return label if c.quantize is None else f"{label}+{c.quantize}"


def _writable_folder(path: Path, what: str) -> None:
    """Refuse now, not after the run, a target whose folder is missing or unwritable."""
    folder = path.parent
    if path.is_dir():
        raise DistillError(f"cannot write {what} {path}: it is a folder; name a file")
    if not folder.is_dir():
        raise DistillError(f"cannot write {what} {path}: folder {folder} does not exist")
    try:  # a real probe: permission bits say nothing for root or a read-only mount
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".habactl-probe-")
    except OSError as error:
        raise DistillError(
            f"cannot write {what} {path}: folder {folder} is not writable "
            f"({error.strerror or error})"
        ) from None
    os.close(handle)
    os.unlink(probe)


def check_archive_target(output: Path, *, force: bool = False) -> None:
    """The archive must be new (or ``force``) and its folder must take a file."""
    output = Path(output)
    if output.exists() and not output.is_dir() and not force:
        raise DistillError(f"{output} exists; pass --force to replace it")
    _writable_folder(output, "the archive")


def check_outputs(
    output: Path,
    *,
    checkpoint: Path | None = None,
    log: Path | None = None,
    force: bool = False,
    resume: bool = False,
) -> Path:
    """Every place a run will write, checked before it starts; the checkpoint path.

    The archive must be new (or ``force``), the checkpoint must not hold another
    unfinished run (unless ``resume`` or ``force``), and every folder must take a file.
    ``resume`` with no checkpoint there is no error: the run starts from the beginning
    (so that one command line serves the first attempt and every restart).
    """
    output = Path(output)
    checkpoint = Path(checkpoint) if checkpoint else ckpt.default_path(output)
    check_archive_target(output, force=force)
    if checkpoint.is_dir():
        raise DistillError(f"cannot write the checkpoint {checkpoint}: it is a folder; name a file")
    if not resume and checkpoint.exists() and not force:
        raise DistillError(
            f"{checkpoint} holds an unfinished run; pass --resume to continue "
            f"it, or --force to start over"
        )
    _writable_folder(checkpoint, "the checkpoint")
    if log is not None:
        _writable_folder(Path(log), "the metrics log")
    return checkpoint


class Distiller:
    """One run: built from a data source and a config, then ``run`` to an archive.

    Construction is a fixed sequence of named steps (the order matters: the ``init``
    random stream is drawn by the bases, the pipeline, the objective and the
    contrastive term, in that order, and a seed must keep giving the same archive).

    The source is a DataSource in memory, or a prepared store (``habactl.data.stored``):
    then nothing of the training set is loaded, and every pass over it streams from
    the store (habactl.distill.stored).

    ``collective`` is the job the run is one process of (default ``SINGLE``: one
    process; the CLI passes the job torchrun launched): it splits the classes and
    sums the gradients over torchrun's ranks, and is the identity for one process.
    """

    def __init__(
        self, source: Any, config: DistillConfig, collective: Collective | None = None
    ) -> None:
        from habactl.data.stored import is_stored

        self.source = source
        self.config = config
        self.collective = collective if collective is not None else SINGLE
        self.stored = is_stored(source)
        check_config(config)
        self.device = self.collective.device_for(config.device)  # its own GPU, per rank
        self.image_shape = (source.channels, source.height, source.width)
        self.normalization, train_images, train_labels = self._training_set()
        self.plan = self._plan(train_images, train_labels)
        self.real = self._real_set(train_images, train_labels)
        self.generators = {
            name: stream(config.seed, name) for name in ("init", "objective", "contrast")
        }
        self.synthetic = self._synthetic_set(train_images, train_labels)
        self.augment = self._augmenter()
        self.objective = self._objective()
        self.contrast = self._contrast()
        self.optimizer = self._optimizer()
        self.learnable = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.hyperparameters = self._hyperparameters()
        self.fingerprint = ckpt.settings_fingerprint(
            {
                "hyperparameters": self.hyperparameters,
                "seed": config.seed,
                "dataset": source.fingerprint,
            }
        )
        self.iteration = 0
        self.resumed = False  # set by run: whether it restored a checkpoint

    # -- construction steps -----------------------------------------------------------
    def _training_set(self) -> tuple[dict[str, Any], Tensor | None, Tensor | None]:
        """The normalisation the archive records, and the real training set in it (None,
        None from a store: its images are read when needed)."""
        from habactl.format.normalization import Normalizer, mean_std

        normalization = mean_std(self.source.mean(), self.source.std())
        self.normalize = Normalizer(normalization)
        if self.stored:
            return normalization, None, None
        images = self.normalize(self.source.train.images.float())
        labels = self.source.train.labels.long()
        if len(labels) == 0:
            raise DistillError(f"data set {self.source.name} has no training images")
        return normalization, images, labels

    def _plan(self, images: Tensor | None, labels: Tensor | None) -> Plan:
        """The budget plan; leftover budget buys extra bases for the most varied classes
        (from a store, the spread is streamed, and only when there is such budget)."""
        c = self.config
        classes = len(self.source.classes)
        # an objective that learns soft labels stores them with every basis: they are paid for
        objective = get_objective(c.objective)
        label_values = objective.label_values_per_basis(c.objective_settings, classes)

        def plan(spread: list[float] | None) -> Plan:
            return plan_pipeline(
                pipeline_entries(c, self.image_shape, classes),
                self.image_shape,
                classes,
                c.ipc,
                counts=c.counts,
                leftover=c.leftover,
                class_priority=None
                if spread is None
                else sorted(range(classes), key=lambda k: (-spread[k], k)),
                codec=None if c.pipeline is not None else _codec_label(c),
                budget_bytes=c.budget_bytes,
                label_values=label_values,
                label_form=c.labels,
            )

        if images is None or labels is None:
            first = plan(None)
            if not first.extra_classes:  # no leftover bases: the order does not matter
                return first
            from habactl.distill import stored

            return plan(stored.class_spread(self.source, self.normalize))
        return plan(class_spread(images, labels, classes))

    def _real_set(self, images: Tensor | None, labels: Tensor | None) -> RealSide:
        c = self.config
        real: RealSide
        if images is None or labels is None:
            from habactl.distill.stored import StoredRealSet

            real = StoredRealSet(
                self.source,
                self.normalize,
                self.device,
                seed=c.seed,
                iterations=c.iterations,
                classes_per_iteration=c.classes_per_iteration,
                collective=self.collective,
            )
        else:
            real = RealSet(
                images,
                labels,
                len(self.source.classes),
                self.device,
                seed=c.seed,
                classes_per_iteration=c.classes_per_iteration,
                collective=self.collective,
            )
        empty = [k for k, n in enumerate(real.counts) if n == 0]
        if empty:
            raise DistillError(f"class {self.source.classes[empty[0]]!r} has no training images")
        smallest = min(real.counts)
        ipc = self.config.ipc
        if ipc >= smallest:
            k = real.counts.index(smallest)
            raise DistillError(
                f"--ipc {ipc} is no compression: class {self.source.classes[k]!r} "
                f"has only {smallest} training images; use --ipc "
                f"{max(1, smallest - 1)} or less"
            )
        return real

    def _synthetic_set(self, images: Tensor | None, labels: Tensor | None) -> SyntheticSet:
        from habactl.codecs import Pipeline

        init = self.generators["init"]
        frequency = [e["name"] for e in self.plan.pipeline[:2]].count("frequency") > 0
        bases = self._initial_bases(images, labels, init, pool=not frequency)
        noise = self.config.hallucinator_noise if self.plan.expansion > 1 else 0.0
        pipeline = Pipeline.from_manifest(
            self.plan.pipeline, self.plan.base_shape, generator=init, noise=noise
        )
        if frequency:
            bases = self._frequency_bases(pipeline, images, labels, bases)
        return SyntheticSet(bases, self.plan.per_class, pipeline).to(self.device)

    def _frequency_bases(
        self, pipeline: Any, images: Tensor | None, labels: Tensor | None, chosen: Tensor
    ) -> Tensor:
        """Fit the frequency stage's mask to the real training images (at the size it
        decodes to; per class, each class's mask to its own images) and start the bases
        as the chosen images' kept coefficients (through their class's mask)."""
        from habactl.codecs.pipeline import basis_classes

        stage = next(s for s in pipeline.stages if s.name == "frequency")
        _, h, w = stage.out_shape

        def sized(x: Tensor) -> Tensor:
            return x if tuple(x.shape[2:]) == (h, w) else F.adaptive_avg_pool2d(x, (h, w))

        if images is None or labels is None:
            from habactl.distill.stored import frequency_energy

            per_class = stage.classes is not None
            stage.fit_energy(frequency_energy(stage, self.source, self.normalize, sized, per_class))
        else:
            stage.fit(sized(images), labels)
        if self.config.init == "noise":  # noise bases stay noise, in coefficient space
            return chosen
        classes = basis_classes(self.plan.per_class)
        return stage.analyse(sized(chosen), classes).contiguous()

    def _augmenter(self) -> Any:
        from habactl.training.augment import SiameseAugment

        return SiameseAugment(self.config.augment, flip=not self.source.is_digits)

    def _objective(self) -> Objective:
        c = self.config
        context = Context(
            real=self.real,
            image_shape=self.image_shape,
            num_classes=len(self.source.classes),
            device=self.device,
            augment=self.augment,
            init_generator=self.generators["init"],
            ipc=c.ipc,
            dataset={"name": self.source.name, "fingerprint": self.source.fingerprint},
            collective=self.collective,
            per_class=list(self.plan.per_class),
            iterations=c.iterations,
            source=self.source,
            normalization=self.normalization,
        )
        objective = get_objective(c.objective)(context, dict(c.objective_settings))
        if c.classes_per_iteration is not None and not objective.samples_real:
            from habactl.distill.objectives import OBJECTIVES

            users = [name for name, cls in OBJECTIVES.items() if cls.samples_real]
            raise DistillError(
                f"--classes-per-iteration applies to --objective {', '.join(users)} only"
            )
        return objective

    def _contrast(self) -> AdversarialContrast | None:
        c = self.config
        use = (self.plan.expansion > 1) if c.contrastive is None else bool(c.contrastive)
        if not use:
            return None
        if self.plan.expansion < 2:
            raise DistillError(
                "the contrastive term needs at least 2 hallucinators "
                "(codec haba or haba+idc); drop --contrastive"
            )
        return AdversarialContrast(
            self.image_shape,
            len(self.source.classes),
            device=self.device,
            generator=self.generators["init"],
            settings=dict(c.contrastive_settings),
        )

    def _optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        groups: list[dict[str, Any]] = [{"params": [self.synthetic.bases], "lr": c.lr_bases}]
        hallucinator_params = self.synthetic.hallucinator_parameters()
        if hallucinator_params:
            groups.append({"params": hallucinator_params, "lr": c.lr_hallucinators})
        groups += self.objective.param_groups()
        chosen = self.objective.optimizer_for(groups)  # an objective's own (sre2l: Adam)
        return chosen or torch.optim.SGD(groups, lr=c.lr_bases, momentum=c.momentum)

    # -- initialisation ---------------------------------------------------------------
    def _initial_bases(
        self,
        images: Tensor | None,
        labels: Tensor | None,
        generator: torch.Generator,
        pool: bool = True,
    ) -> Tensor:
        """Bases start as real images of their class, downsampled for an `upsample` stage
        (area average, the inverse of what bilinear upsampling blurs least). From a
        store only the images picked are read."""
        plan = self.plan
        if self.config.init == "noise":
            return torch.randn(plan.bases, *plan.base_shape, generator=generator)
        chosen = []
        for k, n in enumerate(plan.per_class):
            if images is None or labels is None:  # a store: class k is one range of it
                count, offset = self.source.train.counts[k], self.source.train.offsets[k]
                order = torch.randperm(count, generator=generator)
                picks = order[torch.arange(n) % count] + offset
                part = self.normalize(self.source.train.images[picks])
            else:
                members = torch.nonzero(labels == k).flatten()
                count = len(members)
                order = torch.randperm(count, generator=generator)
                picks = members[order[torch.arange(n) % count]]
                part = images[picks].clone()
            if n > count:  # more bases than images: repeats start slightly apart
                repeat = (torch.arange(n) >= count).view(-1, 1, 1, 1).float()
                part = part + repeat * 0.01 * torch.randn(part.shape, generator=generator)
            chosen.append(part)
        bases = torch.cat(chosen)
        c, h, w = plan.base_shape
        if pool and (h, w) != tuple(self.image_shape[1:]):
            bases = F.adaptive_avg_pool2d(bases, (h, w))
        return bases.contiguous()

    def _hyperparameters(self) -> dict[str, Any]:
        c = self.config
        record = {
            "objective": {"name": c.objective, **self.objective.hyperparameters()},
            "budget": self.plan.describe(),
            "pipeline": self._pipeline_record(),
            "optimizer": {
                "name": type(self.optimizer).__name__.lower(),  # "sgd" unless the objective's
                "lr_bases": float(c.lr_bases),
                "lr_hallucinators": float(c.lr_hallucinators),
                "momentum": float(c.momentum),
            },
            "init": {
                "bases": c.init,
                "downsample": "area",
                "hallucinators": "near-identity",
                "hallucinator_noise": float(c.hallucinator_noise),
            },
            "augmentation": self.augment.to_config(),
            "contrastive": None if self.contrast is None else self.contrast.hyperparameters(),
            "device": self.device.type,
            # Float results depend on the CPU thread count: same seed + same threads = same archive.
            "threads": torch.get_num_threads(),
        }
        # Recorded only when they apply, so that other runs' records stay as they were.
        if c.classes_per_iteration is not None:
            record["classes_per_iteration"] = int(c.classes_per_iteration)
        if self.stored:  # real images read from a store, drawn from their own streams
            record["real_images"] = "store"
        return record

    def _provenance_hyperparameters(self) -> dict[str, Any]:
        """The hyperparameters as the archive records them: with the world size under
        torchrun (not part of the settings fingerprint: --resume names it itself)."""
        world = self.collective.world_size
        return self.hyperparameters if world == 1 else {**self.hyperparameters, "world_size": world}

    def _pipeline_record(self) -> dict[str, Any]:
        """The provenance's summary of the pipeline (its shape predates pipeline entries:
        hallucinator settings come from the `hallucinate` entry, else from the config)."""
        c = self.config
        expands = self.plan.expansion > 1
        h = next(
            (e["configuration"] for e in self.plan.pipeline if e["name"] == "hallucinate"),
            {
                "count": c.hallucinators,
                "arch": c.hallucinator_arch,
                "hidden": c.hidden,
                "kernel": c.kernel,
            },
        )
        return {
            "hallucinators": h["count"] if expands else 0,
            "hallucinator_arch": h["arch"] if expands else None,
            "hidden": h.get("hidden", 3),
            "kernel": h.get("kernel", 3),
            "factor": self.plan.image_shape[1] // self.plan.base_shape[1],
        }

    # -- checkpoints ------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "iteration": self.iteration,
            "bases": self.synthetic.bases.detach().cpu().clone(),
            "pipeline": {
                k: v.detach().cpu().clone()
                for k, v in self.synthetic.pipeline.named_tensors().items()
            },
            "optimizer": self.optimizer.state_dict(),
            "world_size": self.collective.world_size,
            "objective": self.objective.state_dict(),
            "contrast": None if self.contrast is None else self.contrast.state_dict(),
            "rng": {
                **{name: g.get_state() for name, g in self.generators.items()},
                "torch": torch.get_rng_state(),
            },
        }

    def _restore(self, state: Mapping[str, Any]) -> None:
        made_by, world = int(state.get("world_size", 1)), self.collective.world_size
        if made_by != world:  # each rank's share of the classes would change
            raise DistillError(
                f"the checkpoint was made by {made_by} process(es), this run has {world}; "
                f"resume with the same number (torchrun --nproc-per-node {made_by}, or one "
                "process for 1)"
            )
        with torch.no_grad():
            self.synthetic.bases.copy_(state["bases"])
            self.synthetic.pipeline.load_tensors(state["pipeline"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.objective.load_state_dict(state["objective"])
        if self.contrast is not None:
            self.contrast.load_state_dict(state["contrast"])
        for name, g in self.generators.items():
            g.set_state(state["rng"][name])
        torch.set_rng_state(state["rng"]["torch"])
        self.iteration = int(state["iteration"])

    # -- the loop -----------------------------------------------------------------------
    def step(self) -> dict[str, float]:
        """One iteration: loss, gradients of the stored tensors, one optimiser step.

        Under torchrun each rank's loss covers its own classes (or, for an objective that
        draws per rank, is its own sample over N), the collective sums the losses and the
        gradients over the ranks, and every rank takes the same step; the contrastive
        term is counted once, on rank 0. For one process those sums are the identity."""
        self.real.begin(self.iteration)  # which classes; a store starts reading ahead
        total, record = self._loss()
        if not math.isfinite(record["loss"]):
            raise NonFiniteLoss(
                f"the loss became {record['loss']} at iteration {self.iteration + 1}"
            )
        grads = torch.autograd.grad(total, self.learnable, allow_unused=True)
        for p, g in zip(self.learnable, grads):
            # dense: a gradient of a sum may be a stride-0 view of one value, which the
            # in-place sum over torchrun's ranks below would write past
            p.grad = torch.zeros_like(p) if g is None else g.contiguous()
        self.collective.all_reduce_sum([p.grad for p in self.learnable])
        bound = self.objective.max_step()
        if bound is not None:  # only objectives whose gradients can explode ask (mtt)
            bound_steps(self.optimizer.param_groups, bound)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.contrast is not None:
            self.contrast.step()
        self.objective.after_step(self.synthetic, self.generators["objective"])
        self.iteration += 1
        return record

    def _loss(self) -> tuple[Tensor, dict[str, float]]:
        """This process's loss (the objective's, plus the contrastive term on rank 0) and
        the iteration's record, its losses summed over the ranks."""
        name = self.config.objective
        apart = self.collective.world_size > 1 and _draws_per_rank(self.objective)
        generator = self._rank_generator() if apart else self.generators["objective"]
        loss, metrics = self.objective.loss(self.synthetic, generator)
        if apart:  # this rank's sample is 1/N of the mean the ranks' sums make
            loss = loss / self.collective.world_size
        total = loss
        values: dict[str, float | Tensor] = {name: loss, **metrics}
        if self.contrast is not None and self.collective.is_main:
            penalty, contrast_metrics = self.contrast.penalty(
                self.synthetic, self.generators["contrast"]
            )
            total = loss + penalty
            values.update(contrast_metrics)
        values["loss"] = total
        record = runtime.host_values(values)  # the iteration's one wait for the device
        record[name], record["loss"] = self.collective.sum_floats([record[name], record["loss"]])
        return total, record

    def _rank_generator(self) -> torch.Generator:
        """This rank's own stream for this iteration (objectives that draw per rank).

        Derived afresh from the seed, the rank and the iteration, never carried over: a
        checkpoint holds rank 0's generators only, and a resume at the same world size
        must draw what the uninterrupted run drew on every rank."""
        purpose = f"objective/rank-{self.collective.rank}/iteration-{self.iteration}"
        return stream(self.config.seed, purpose)

    def run(
        self,
        output: Path,
        *,
        force: bool = False,
        resume: bool = False,
        checkpoint_path: Path | None = None,
        log: Path | None = None,
        reporter: Reporter | None = None,
    ) -> DistillResult:
        """Start (or resume), iterate, write the archive.

        The outputs are checked once, before any data is loaded, by whoever loads it
        (``habactl compress``, :func:`distill`: :func:`check_outputs`); a run takes them
        as checked (the archive is still never written over a file without ``force``)."""
        output = Path(output)
        checkpoint_path = Path(checkpoint_path) if checkpoint_path else ckpt.default_path(output)
        started_at = self._start(checkpoint_path, resume)
        main = self.collective.is_main  # under torchrun only rank 0 writes files
        metrics_log = MetricsLog(log if main else None)
        metrics_log.write(
            {
                "event": "resume" if self.resumed else "start",
                "iteration": self.iteration,
                "iterations": self.config.iterations,
                "plan": self.plan.describe(),
            }
        )
        clock = time.perf_counter()
        try:
            last = self._loop(checkpoint_path, metrics_log, reporter or Reporter())
        finally:
            self.real.close()
        path = self._write(output, force) if main else output
        if main:
            ckpt.remove(checkpoint_path)
        seconds = time.perf_counter() - clock
        metrics_log.write({"event": "end", "iteration": self.iteration, "path": str(path)})
        metrics_log.close()
        return DistillResult(
            path=Path(path),
            plan=self.plan,
            iterations=self.config.iterations,
            resumed_from=started_at,
            seconds=seconds,
            final_loss=last.get("loss"),
            device=self.device.type,
        )

    # -- run steps ----------------------------------------------------------------------
    def _start(self, checkpoint_path: Path, resume: bool) -> int:
        """Restore the checkpoint when resuming and there is one; the iteration the run
        starts at (0 when there is none: ``resume`` then starts from the beginning)."""
        self.resumed = resume and checkpoint_path.is_file()
        if self.resumed:
            self._restore(ckpt.load(checkpoint_path, self.fingerprint))
        self.collective.check_same_start(self.iteration)
        if self.iteration > self.config.iterations:
            raise DistillError(
                f"the checkpoint is at iteration {self.iteration}, beyond "
                f"--iterations {self.config.iterations}"
            )
        return self.iteration

    def _loop(
        self, checkpoint_path: Path, metrics_log: MetricsLog, reporter: Reporter
    ) -> dict[str, float]:
        """Iterate to the end; checkpoint when due and on Ctrl-C (then stop)."""
        total = self.config.iterations
        stop = _StopFlag()
        last: dict[str, float] = {}
        main = self.collective.is_main
        reporter.start(total, self.iteration, f"{self.config.objective} {self.plan.codec}")
        try:
            with stop.installed():
                while self.iteration < total:
                    last = self._checked_step(checkpoint_path)
                    metrics_log.write({"event": "iteration", "iteration": self.iteration, **last})
                    reporter.update(self.iteration, last)
                    due = self.iteration % self.config.checkpoint_every == 0
                    # Under torchrun every rank stops after the same iteration, whichever
                    # saw the Ctrl-C first (one alone would leave the others in a collective).
                    stopping = self.collective.any_rank(stop.requested)
                    save = stopping or (due and self.iteration < total)
                    if save and main:
                        ckpt.save(checkpoint_path, self._state())
                    if stopping:
                        metrics_log.write({"event": "interrupted", "iteration": self.iteration})
                        raise Interrupted(self.iteration, str(checkpoint_path))
        finally:
            reporter.close()
        return last

    def _checked_step(self, checkpoint_path: Path) -> dict[str, float]:
        try:
            return self.step()
        except NonFiniteLoss as error:
            kept = (
                f"; the last good checkpoint is {checkpoint_path}"
                if checkpoint_path.exists()
                else ""
            )
            raise NonFiniteLoss(
                f"{error}: nothing was written; lower the learning rates "
                f"(--lr-bases, --lr-hallucinators){kept}"
            ) from None

    def _recorded_arch(self) -> str:
        """The network the standard recipe names for this data's image size."""
        from habactl.evaluation.protocol import STANDARD_ARCH
        from habactl.nets.registry import arch_name

        return arch_name(STANDARD_ARCH, self.source.height, self.source.width)

    def _write(self, output: Path, force: bool) -> Path:
        """The archive, once every stored tensor is known to be finite."""
        from habactl.distill.archive import write_haba

        bases = self.synthetic.bases.detach().cpu()
        if not bool(torch.isfinite(bases).all()) or not all(
            bool(torch.isfinite(p).all()) for p in self.synthetic.pipeline.parameters()
        ):
            raise NonFiniteLoss(
                "the stored tensors are no longer finite; nothing was written; "
                "lower the learning rates (--lr-bases, --lr-hallucinators)"
            )
        c = self.config
        learned = self.objective.learned_labels()  # soft labels, when the objective learns them
        labels = self.synthetic.labels if learned is None else learned
        if learned is not None and not bool(torch.isfinite(learned).all()):
            raise NonFiniteLoss(
                "the learned labels are no longer finite; nothing was written; "
                "lower the learning rates"
            )
        fields = dict(
            source=self.source,
            bases=bases,
            labels=labels.cpu(),
            per_class=self.plan.per_class,
            pipeline=self.synthetic.pipeline,
            normalization=self.normalization,
            objective=c.objective,
            hyperparameters=self._provenance_hyperparameters(),
            iterations=c.iterations,
            seed=c.seed,
            ipc=self.plan.ipc,
            counts=c.counts,
            learned_lr=self.objective.learned_lr(),
            protocol=self.objective.training_recipe(self._recorded_arch()),
        )
        if c.labels is None:
            return Path(write_haba(output, overwrite=force, **fields))
        # --labels: the archive with hard labels goes to a hidden file beside the output,
        # the teacher relabels it into the output (one atomic write), and the hidden file
        # is removed whatever happens. The plan kept the labels' bytes free, so the result
        # fits its budget (relabel checks that again).
        from habactl.labels.relabeling import relabel

        hard = output.with_name(f".{output.name}.hard-labels.haba")
        try:
            write_haba(hard, overwrite=True, **fields)
            teacher = str(c.objective_settings["teacher"])
            result = relabel(
                hard, teacher, output, form=c.labels, overwrite=force, device=self.device
            )
        finally:
            hard.unlink(missing_ok=True)
        return Path(result.path)


def _draws_per_rank(objective: Objective) -> bool:
    """Whether, under torchrun, each rank of the objective draws a sample of its own (the
    loss is the mean over ranks) rather than its share of the classes (the sum)."""
    return bool(getattr(objective, "draws_per_rank", False))


class _StopFlag:
    """Ctrl-C asks the loop to stop at the end of the iteration (after a checkpoint);
    a second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.requested = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    class _Installed:
        def __init__(self, flag: _StopFlag) -> None:
            self.flag = flag
            self.previous: Any = None

        def __enter__(self) -> None:
            if threading.current_thread() is threading.main_thread():
                self.previous = signal.signal(signal.SIGINT, self.flag._handle)

        def __exit__(self, *exc: Any) -> None:
            if self.previous is not None:
                signal.signal(signal.SIGINT, self.previous)

    def installed(self) -> _StopFlag._Installed:
        return _StopFlag._Installed(self)


def distill(source: Any, config: DistillConfig, output: Path, **run_options: Any) -> DistillResult:
    """Check the outputs, then plan, initialise, optimise and write ``output``; see
    ``Distiller.run`` for the options."""
    option = run_options.get
    checkpoint = check_outputs(
        output,
        checkpoint=option("checkpoint_path"),
        log=option("log"),
        force=option("force", False),
        resume=option("resume", False),
    )
    return Distiller(source, config).run(output, **{**run_options, "checkpoint_path": checkpoint})


def config_dict(config: DistillConfig) -> dict[str, Any]:
    return asdict(config)
