"""IDC (Efficient-Dataset-Condensation): ``data.pt`` = ``[images, targets]``.

Images are pixels in [0, 1] (the code normalises after decoding), class-major, the same
number per class. With multi-formation factor f, each stored image holds f x f
low-resolution images: crop (i, j) is rows ``i*s .. (i+1)*s`` and columns
``j*s .. (j+1)*s`` with ``s = H / f``, and IDC decodes every crop with
``nn.Upsample(size=H, mode='bilinear')`` (align_corners False), class by class, crop
position by crop position: for class c, decoded image ``p * n + m`` is crop p (row-major
over (i, j)) of stored image m. Importing unpacks the crops into bases in that order and
adds ``upsample{factor: f, mode: bilinear}``, which decodes exactly so.
"""

from __future__ import annotations

from pathlib import Path

import torch

from habactl.interop.common import Imported, InteropError, Options, as_images, as_labels, one_file
from habactl.interop.safe_load import load_torch


def unpack(
    images: torch.Tensor, labels: torch.Tensor, factor: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bases (N·f², C, H/f, W/f) in IDC's decode order, and their labels."""
    n, c, h, w = images.shape
    if h % factor or w % factor:
        # IDC pads with 0.5 and resizes by a non-integer ratio then; an integer-factor
        # upsample cannot decode that exactly, so it is refused rather than approximated.
        raise InteropError(f"idc: --factor {factor} does not divide the image size {h}x{w}")
    s, t = h // factor, w // factor
    counts = torch.bincount(labels, minlength=int(labels.max()) + 1)
    bases, out_labels = [], []
    start = 0
    for count in counts.tolist():
        block = images[start : start + count]
        for i in range(factor):
            for j in range(factor):
                bases.append(block[:, :, i * s : (i + 1) * s, j * t : (j + 1) * t])
                out_labels.append(labels[start : start + count])
        start += count
    return torch.cat(bases).contiguous(), torch.cat(out_labels).contiguous()


def read(files: list[Path], options: Options) -> Imported:
    path = one_file(files, "idc", "data.pt")
    content = load_torch(path)
    if not isinstance(content, (list, tuple)) or len(content) != 2:
        raise InteropError(f"{path.name}: expected [images, targets]")
    notes: list[str] = []
    images = as_images(content[0], path.name)
    labels = as_labels(content[1], images.shape[0], path.name, notes)
    if labels.dim() != 1:
        raise InteropError(f"{path.name}: IDC stores class indices; found soft labels")
    if bool((labels[1:] < labels[:-1]).any()):
        raise InteropError(f"{path.name}: targets are not class-major (IDC decodes class blocks)")
    factor = options.factor
    if factor < 1:
        raise InteropError(f"idc: --factor must be >= 1, got {factor}")
    if factor == 1:
        return Imported(bases=images, labels=labels, space="pixels", notes=notes)
    bases, labels = unpack(images, labels, factor)
    notes.append(
        f"multi-formation factor {factor}: {images.shape[0]} stored images -> "
        f"{bases.shape[0]} bases"
    )
    stage = {
        "name": "upsample",
        "version": 1,
        "configuration": {"factor": factor, "mode": "bilinear"},
    }
    return Imported(bases=bases, labels=labels, space="pixels", pipeline=[stage], notes=notes)
