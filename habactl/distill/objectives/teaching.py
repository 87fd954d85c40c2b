"""What the teacher-driven objectives (sre2l, rded) share: the teacher they read, checked
against the data before any work, the map from the run's normalised space into the
teacher's, and random resized crops drawn from an explicit generator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from habactl.distill.errors import DistillError
from habactl.errors import HabaError


def teacher_setting() -> Any:
    """The ``--teacher`` setting every teacher-driven objective declares (a new field
    each call: a dataclass field belongs to one class)."""
    from habactl.distill.setting import setting

    return setting(
        None,
        "--teacher",
        "The teacher file the objective reads (make one with habactl teacher DATA -o FILE).",
        path=True,
    )


def open_teacher(objective: str, path: str | None, context: Any) -> Any:
    """The teacher file ``path`` (a ``--teacher`` setting), loaded on the run's device and
    checked against the data: its classes and image shape (one-line errors)."""
    from habactl.teacher.file import check_teacher_for, load_teacher

    if not path:
        raise DistillError(
            f"--objective {objective} needs a teacher: --teacher FILE "
            "(make one with: habactl teacher DATA -o FILE)"
        )
    teacher = load_teacher(path, device=context.device)
    if context.source is not None:
        try:
            check_teacher_for(teacher, context.source)
        except HabaError as error:
            raise DistillError(f"{objective}: {error}") from None
    elif teacher.classes and len(teacher.classes) != context.num_classes:
        raise DistillError(
            f"{objective}: the teacher knows {len(teacher.classes)} classes; "
            f"the data has {context.num_classes}"
        )
    if tuple(teacher.image_shape) != tuple(context.image_shape):
        raise DistillError(
            f"{objective}: the teacher takes images of {_shape(teacher.image_shape)}; "
            f"the data's are {_shape(context.image_shape)}"
        )
    return teacher


def _shape(shape: Any) -> str:
    return "x".join(str(int(v)) for v in shape)


class TeacherInput:
    """The run's normalised space -> the teacher's input space: the identity when the
    teacher was trained with the run's normalisation (a teacher of this data set), else
    the per-channel affine map between the two mean-std normalisations."""

    def __init__(
        self, run: Mapping[str, Any] | None, teacher: Mapping[str, Any], device: torch.device
    ) -> None:
        self.identity = run is None or _same(run, teacher)
        self.scale: Tensor | None = None
        self.shift: Tensor | None = None
        if not self.identity:
            assert run is not None
            for what, value in (("the run's", run), ("the teacher's", teacher)):
                if value.get("kind") != "mean-std":
                    raise DistillError(
                        f"{what} normalisation is {value.get('kind')!r}; a teacher reads "
                        "mean-std normalised images"
                    )
            m, s = torch.tensor(run["mean"]), torch.tensor(run["std"])
            tm, ts = torch.tensor(teacher["mean"]), torch.tensor(teacher["std"])
            # x_run = (p - m) / s and x_teacher = (p - tm) / ts for the same pixels p
            self.scale = (s / ts).view(1, -1, 1, 1).float().to(device)
            self.shift = ((m - tm) / ts).view(1, -1, 1, 1).float().to(device)

    def __call__(self, x: Tensor) -> Tensor:
        if self.identity:
            return x
        assert self.scale is not None and self.shift is not None
        return x * self.scale + self.shift


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    if a.get("kind") != b.get("kind"):
        return False
    if a.get("kind") != "mean-std":
        return True
    pairs = list(zip(a["mean"], b["mean"])) + list(zip(a["std"], b["std"]))
    return len(a["mean"]) == len(b["mean"]) and all(abs(x - y) <= 1e-7 for x, y in pairs)


def pixel_bounds(normalization: Mapping[str, Any] | None, device: torch.device) -> Any:
    """(low, high) per channel, (1, C, 1, 1): pixels 0 and 1 in the normalised space;
    None when the space is not mean-std."""
    if normalization is None or normalization.get("kind") != "mean-std":
        return None
    mean = torch.tensor(normalization["mean"], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(normalization["std"], dtype=torch.float32).view(1, -1, 1, 1)
    return (-mean / std).to(device), ((1 - mean) / std).to(device)


def crop_boxes(
    count: int,
    generator: torch.Generator,
    *,
    scale: tuple[float, float],
    ratio: tuple[float, float] | None,
    flip: bool,
) -> Tensor:
    """(count, 2, 3) affine maps (``F.affine_grid``'s theta) of random resized crops:
    area a fraction in ``scale`` of the image, aspect ratio log-uniform in ``ratio``
    (None: the image's own), placed uniformly inside the image, mirrored left-right with
    probability 1/2 when ``flip``. One generator call, so the stream is fixed per count."""
    u = torch.rand(count, 5, generator=generator, dtype=torch.float64)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    if ratio is None:
        aspect = torch.ones(count, dtype=torch.float64)
    else:
        low, high = math.log(ratio[0]), math.log(ratio[1])
        aspect = torch.exp(low + (high - low) * u[:, 1])
    # sides as fractions of the image's: w * h = area, w / h = aspect (clipped to the image)
    w = torch.sqrt(area * aspect).clamp(max=1.0)
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (2 * u[:, 2] - 1) * (1 - w)
    cy = (2 * u[:, 3] - 1) * (1 - h)
    mirror = torch.where((u[:, 4] < 0.5) & flip, -1.0, 1.0)
    theta = torch.zeros(count, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = w * mirror
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    return theta.float()


def resized_crops(images: Tensor, theta: Tensor, size: tuple[int, int], supersample: int) -> Tensor:
    """The crops ``theta`` of ``images`` (one each), resized to ``size`` by bilinear
    sampling; ``supersample`` > 1 samples that many points per output pixel side and
    averages them (an area filter: a large crop shrunk is not aliased). Differentiable
    with respect to ``images``."""
    n, c = images.shape[:2]
    h, w = size
    k = max(1, int(supersample))
    grid = F.affine_grid(theta.to(images.device), [n, c, h * k, w * k], align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return F.avg_pool2d(out, k) if k > 1 else out


__all__ = ["TeacherInput", "crop_boxes", "open_teacher", "pixel_bounds", "resized_crops"]
