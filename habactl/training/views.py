"""Per-crop labels at training time (format 1.4, ``labels.crops``; format/SPEC.md §2.2).

An archive with per-crop labels stores, for each of E epochs, one augmented view of
every training item: a crop box (centre x, centre y, width, height, in the image's
[-1, 1] coordinates and fractions of its sides), a mirror flag, and the teacher's label
for exactly that view. Training epoch e uses the views of stored epoch ``e mod E``: the
stored crop is the augmentation and the stored label is the target, as SRe2L-style
relabelling trains its students. ``CropViews`` holds them and applies them to a batch.

The boxes are drawn by the knowledge-distillation recipe's random resized crop
(habactl.training.resized_crop) and rounded to binary16 before the teacher sees the
view, so the stored box is the view the label belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from habactl.errors import HabaError
from habactl.training.augment import AugmentParams
from habactl.training.resized_crop import ResizedCropFlip

BOX_FIELDS = ("centre_x", "centre_y", "width", "height")


@dataclass(frozen=True)
class CropViews:
    """E epochs of views of N items: ``box`` (E, N, 4) float32, ``mirror`` (E, N) float32
    (1 mirrors the crop left to right), ``labels`` (E, N, classes) float32."""

    box: Tensor
    mirror: Tensor
    labels: Tensor

    @classmethod
    def from_arrays(cls, box: object, mirror: object, labels: object, items: int) -> CropViews:
        """From an archive's rows (epoch-major, ``items`` rows per epoch)."""
        box_t = torch.as_tensor(box, dtype=torch.float32)
        mirror_t = torch.as_tensor(mirror).to(torch.float32)
        labels_t = torch.as_tensor(labels, dtype=torch.float32)
        rows = box_t.shape[0]
        if items < 1 or rows % items:
            raise HabaError(f"{rows} stored views do not divide into epochs of {items} items")
        epochs = rows // items
        return cls(
            box_t.reshape(epochs, items, 4),
            mirror_t.reshape(epochs, items),
            labels_t.reshape(epochs, items, -1),
        )

    @property
    def epochs(self) -> int:
        return int(self.box.shape[0])

    @property
    def items(self) -> int:
        return int(self.box.shape[1])

    def params(self, epoch: int, index: Tensor) -> AugmentParams:
        """The stored crops of ``index``'s items in training epoch ``epoch``."""
        stored = epoch % self.epochs
        index = index.cpu()
        box = self.box[stored, index]
        values = {name: box[:, i].contiguous() for i, name in enumerate(BOX_FIELDS)}
        values["mirror"] = self.mirror[stored, index]
        return AugmentParams("rrc", values, int(index.numel()))

    def targets(self, epoch: int, index: Tensor) -> Tensor:
        """The stored labels of those views, (len(index), classes)."""
        return self.labels[epoch % self.epochs, index.cpu()]

    def apply(self, images: Tensor, epoch: int, index: Tensor) -> Tensor:
        """``images`` (the items ``index``, in order) cropped, resized and mirrored as
        their stored views in ``epoch``."""
        with torch.no_grad():
            return ResizedCropFlip().apply(images, self.params(epoch, index))

    def with_labels(self, labels: Tensor) -> CropViews:
        """The same views with other targets (e.g. brought to another temperature)."""
        return CropViews(self.box, self.mirror, labels.reshape(self.labels.shape))


def draw_views(
    items: int, epochs: int, generator: torch.Generator, *, scale: float, flip: bool
) -> tuple[Tensor, Tensor]:
    """E epochs of random resized crops for ``items`` items: box (E·N, 4) float16, mirror
    (E·N,) uint8, epoch-major."""
    if items < 1 or epochs < 1:
        raise HabaError("per-crop labels need at least one item and one epoch")
    crop = ResizedCropFlip(scale, flip=flip)
    boxes, flags = [], []
    for _ in range(epochs):
        values = crop.sample(generator, items).values
        # binary16 moves each value by at most 2^-12 in [-1, 1]: a box stays within the
        # format's slack of the image's edge (format/labels.py BOX_SLACK).
        boxes.append(torch.stack([values[name] for name in BOX_FIELDS], 1).half())
        flags.append(values["mirror"].to(torch.uint8))
    return torch.cat(boxes).contiguous(), torch.cat(flags).contiguous()


__all__ = ["BOX_FIELDS", "CropViews", "draw_views"]
