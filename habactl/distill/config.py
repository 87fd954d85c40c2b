"""The settings of a compress run, declared once: frozen dataclasses of typed fields.

``DistillConfig`` is every choice of the engine (all of them end up in the archive's
provenance), ``ContrastiveSettings`` the contrastive term's, ``RunSettings`` where the
data and the archive are and how the run goes; ``CompressSettings`` is one run's whole
set. Each field is a ``setting()``: its default, and how the command line and a config
file offer it (``habactl.distill.setting``). ``habactl compress`` generates its flags
from these fields, from each objective's ``Settings`` and from each stage's ``options``
(``habactl.distill.flags``), and fills them in one order (``habactl.distill.assemble``):
the declared defaults, then the objective's engine defaults, then a config file, then the
flags given. Standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from habactl.codecs.spec import HALLUCINATE_DEFAULTS  # torch-free
from habactl.distill.setting import setting

# The help's groups of flags (a flag without a panel is under "Options").
BUDGET = "Budget and codec"
DISTILL = "Distillation"
RUN = "Run control"


@dataclass(frozen=True)
class DistillConfig:
    """Every choice of a run; all of them end up in the archive's provenance.

    The defaults are the `habactl compress` defaults: HaBa + IDC with distribution
    matching at IPC 1, sized to finish on a 2-core CPU in a few minutes.
    """

    objective: str = setting(
        "dm",
        "--objective",
        "How the synthetic set is made: {choices}. An option that does not apply to it is "
        "an error.",
        always=True,
    )
    # every setting of the objective (its ``Settings``; a config file's [settings])
    objective_settings: Mapping[str, Any] = setting(factory=dict, key="settings")
    # budget and codec: `pipeline` (manifest entries, [{"name", "version",
    # "configuration"}]) when given; otherwise the `codec` preset configured from
    # factor / hallucinators / hallucinator_arch / hidden / kernel.
    pipeline: tuple[Mapping[str, Any], ...] | None = setting(None)
    ipc: int = setting(
        1,
        "--ipc",
        "Budget: images per class; N means N float32 images' bytes per class.",
        panel=BUDGET,
        min=1,
    )
    budget_bytes: int | None = setting(  # a budget in bytes instead of `ipc` (then ipc is ignored)
        None,
        "--budget-bytes",
        "Budget in bytes for the whole archive's synthetic set, instead of --ipc (every "
        "stored byte counts; the archive records the smallest IPC that holds it).",
        panel=BUDGET,
        min=1,
    )
    codec: str = setting(
        "haba+idc",
        "--codec",
        "What is stored: raw images, idc (low-resolution bases), haba (bases x "
        "hallucinators) or haba+idc.",
        panel=BUDGET,
    )
    # bases stored as DCT coefficients (a frequency stage in front), the kept frequencies
    # one mask for all classes ("shared") or one per class
    frequency: int | None = setting(
        None,
        "--frequency",
        "Store the bases as K DCT coefficients per channel (FreD); the kept frequencies (a "
        "stored mask) are those of most energy in the real images. Any codec.",
        panel=BUDGET,
        min=1,
    )
    frequency_mask: str = setting(
        "shared",
        "--frequency-mask",
        "With --frequency: one mask of kept frequencies for all classes (shared), or one per "
        "class, each chosen on its own class's images (per-class; stored and counted: "
        "classes x C x H x W bytes).",
        panel=BUDGET,
    )
    # bases stored as float16 / uint8 / uint4 (a quantize stage in front of the pipeline)
    quantize: str | None = setting(
        None,
        "--quantize",
        "Store the bases at lower precision: float16, bfloat16, uint8 or uint4 (two codes a "
        "byte); distillation trains through the rounding. Any codec.",
        panel=BUDGET,
    )
    quantize_granularity: str = setting(
        "tensor",
        "--quantize-granularity",
        "One scale and zero-point for all bases (tensor) or one per channel (uint8, uint4).",
        panel=BUDGET,
    )
    counts: str = setting(
        "all",
        "--budget-counts",
        "What the budget is charged with: all stored values, or bases only (the reference "
        "code's counting; hallucinators ride free).",
        panel=BUDGET,
    )
    # the codec preset's stage options: their flags, help and defaults are the stages'
    factor: int | None = setting(None, stage=("upsample", "factor"))
    hallucinators: int = setting(HALLUCINATE_DEFAULTS["count"], stage=("hallucinate", "count"))
    hallucinator_arch: str = setting(HALLUCINATE_DEFAULTS["arch"], stage=("hallucinate", "arch"))
    hidden: int = setting(HALLUCINATE_DEFAULTS["hidden"], stage=("hallucinate", "hidden"))
    kernel: int = setting(HALLUCINATE_DEFAULTS["kernel"], stage=("hallucinate", "kernel"))
    # any other option of the preset's stages, by stage: {"upsample": {"mode": "nearest"}}
    stage_options: Mapping[str, Mapping[str, Any]] = setting(factory=dict)
    # a teacher's soft labels, written after distillation in a storage form; charged first
    labels: str | None = setting(
        None,
        "--labels",
        "Soft labels from the objective's teacher (sre2l, rded: --teacher), stored as "
        "float32, float16, uint8 or top-k:K; their bytes come out of the budget before any "
        "basis is bought. Default: hard labels (free).",
        panel=BUDGET,
        unset="hard",
    )
    leftover: str = setting(
        "bases",
        "--leftover",
        "Budget left after equal bases per class: bases (one more basis for the most varied "
        "classes) or none.",
        panel=BUDGET,
    )
    # optimisation
    iterations: int = setting(300, "--iterations", "Distillation iterations.", panel=DISTILL, min=0)
    # classes matched per iteration, drawn afresh each time (None: every class)
    classes_per_iteration: int | None = setting(
        None,
        "--classes-per-iteration",
        "dm, dc, dsa: match K random classes per iteration instead of all (for many classes).",
        panel=DISTILL,
        min=1,
        unset="all",
    )
    lr_bases: float = setting(1.0, "--lr-bases", "SGD learning rate of the bases.", panel=DISTILL)
    lr_hallucinators: float = setting(
        0.001, "--lr-hallucinators", "SGD learning rate of the hallucinators.", panel=DISTILL
    )
    momentum: float = setting(
        0.5, "--momentum", "SGD momentum of the stored tensors.", panel=DISTILL
    )
    # initialisation
    init: str = setting("real", "--init", "Bases start as real images or noise.", panel=DISTILL)
    hallucinator_noise: float = setting(0.01)  # spread of the hallucinators' initial weights
    # augmentation (DSA strategy or "none"; flip is dropped for digit data)
    augment: str = setting(
        "color_crop_cutout_flip_scale_rotate",
        "--augment",
        "Siamese augmentation ops joined by _ (no flip on digit data), or none.",
        panel=DISTILL,
    )
    # adversarial contrastive term: None = on for codecs with hallucinators
    contrastive: bool | None = setting(
        None,
        "--contrastive/--no-contrastive",
        "HaBa's adversarial contrastive term.",
        panel=DISTILL,
        unset="on when there are hallucinators",
    )
    # the contrastive term's settings (ContrastiveSettings' fields; a config's table)
    contrastive_settings: Mapping[str, Any] = setting(factory=dict)
    seed: int = setting(0, "--seed", "Seed for every random choice.")
    device: str = setting("auto", "--device", "auto, cpu or cuda.", panel=RUN)
    checkpoint_every: int = setting(
        50, "--checkpoint-every", "Iterations between checkpoints.", panel=RUN, min=1
    )


@dataclass(frozen=True)
class ContrastiveSettings:
    """HaBa's adversarial contrastive term (habactl.distill.contrastive)."""

    weight: float = setting(  # λ on the bases/hallucinator side
        0.1,
        "--contrast-weight",
        "Weight of the cosine penalty on the synthetic side.",
        panel=DISTILL,
    )
    ce: float = setting(1.0)  # extractor: cross-entropy weight
    supcon: float = setting(0.1)  # extractor: contrastive weight
    temperature: float = setting(0.07)
    lr: float = setting(  # extractor SGD
        1e-3,
        "--extractor-lr",
        "SGD learning rate of the contrastive feature extractor.",
        panel=DISTILL,
    )
    momentum: float = setting(0.9)
    batch: int = setting(  # bases per iteration (random subset; 0 = all)
        32,
        "--contrast-batch",
        "Bases per iteration in the contrastive term (0: all).",
        panel=DISTILL,
        min=0,
    )
    arch: str = setting("convnet")


@dataclass(frozen=True)
class RunSettings:
    """Where the data and the archive are, and how the run goes (nothing of this changes
    the archive's contents, but ``threads``: float results depend on it)."""

    data: str = setting(
        "mnist-5k",
        "DATA",
        "Data set: an embedded name (mnist-5k, digits), a torchvision name (mnist, "
        "fashion-mnist, kmnist, cifar10, cifar100, svhn) with --root, an ImageFolder "
        "directory, an .h5/.npz file, or a store (habactl prepare; read lazily: any size).",
        always=True,
    )
    output: Path | None = setting(
        None,
        ("-o", "--output"),
        "Archive to write.",
        unset="<data>.haba in the current folder",
        always=True,
    )
    config: Path | None = setting(
        None,
        "--config",
        "A config file (TOML) with any of these settings; flags given here override it. "
        "habactl inspect A.haba --config prints the one that rebuilds A.",
        always=True,
    )
    threads: int = setting(
        0,
        "--threads",
        "CPU threads for torch (0: torch's default, one per core). Results depend on it (it "
        "is recorded); on a CPU busy with other work, 1 is often much faster.",
        panel=RUN,
        min=0,
    )
    checkpoint: Path | None = setting(
        None, "--checkpoint", "Checkpoint file.", panel=RUN, unset="<output>.ckpt"
    )
    resume: bool = setting(
        False,
        "--resume",
        "Continue from the checkpoint if there is one, else start from the beginning (with "
        "a note): the same command serves a first run and every restart (torchrun "
        "--max-restarts).",
        panel=RUN,
    )
    log: bool = setting(False, "--log", "Write a JSONL metrics log next to the output.", panel=RUN)
    log_file: Path | None = setting(
        None, "--log-file", "Write the JSONL metrics log here (implies --log).", panel=RUN
    )
    root: Path | None = setting(
        None, "--root", "Folder holding torchvision data sets.", always=True
    )
    download: bool = setting(
        False, "--download", "Let torchvision download (needs a network).", always=True
    )
    images_key: str | None = setting(
        None,
        "--images-key",
        "The images' dataset in an .h5/.npz file.",
        unset="images",
        always=True,
    )
    labels_key: str | None = setting(
        None,
        "--labels-key",
        "The labels' dataset in an .h5/.npz file.",
        unset="labels",
        always=True,
    )
    force: bool = setting(False, "--force", "Replace an existing output file.", always=True)
    quiet: bool = setting(False, ("-q", "--quiet"), "Print nothing but errors.", always=True)


@dataclass(frozen=True)
class CompressSettings:
    """One compress run: what the engine does, and how the run goes around it."""

    run: RunSettings
    distill: DistillConfig
