"""One image file (or PIL image) to uint8 (C, H, W) under the prepare rules.

Without ``--mode`` every image must have the first image's mode (grayscale or RGB; a
1-bit image counts as grayscale, a palette image as RGB); without ``--resolution``
every image must have the first image's size. Messages name the file and the flag
that would help.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from habactl.data.base import reason
from habactl.store.layout import StoreError
from habactl.store.pixels import resize_crop

# Modes read as they are, and modes converted because no information is lost.
CHANNELS = {"L": 1, "RGB": 3}
LOSSLESS = {"1": "L", "P": "RGB"}


class BadImage(StoreError):
    """A file that does not decode as an image (what --skip-bad leaves out)."""


@dataclass(frozen=True)
class Rule:
    """What every image must become: ``mode`` (L or RGB) and (width, height)."""

    mode: str
    size: tuple[int, int]
    convert: bool  # --mode given: convert any mode instead of refusing
    resolution: int | None
    reference: str  # the first image, named in messages

    @property
    def shape(self) -> tuple[int, int, int]:
        width, height = self.size
        return (CHANNELS[self.mode], height, width)


def open_image(path: str) -> Any:
    """The decoded PIL image at ``path``; BadImage if it does not decode."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()  # decoded now: the image stays usable once the file is closed
            return img
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise BadImage(f"{path}: cannot read image ({reason(exc)})") from exc


def first_rule(image: Any, where: str, mode: str | None, resolution: int | None) -> Rule:
    """The rule set by the first image (``where`` names it) and the flags."""
    natural = LOSSLESS.get(image.mode, image.mode)
    if mode is None and natural not in CHANNELS:
        raise StoreError(
            f"{where}: image mode {image.mode} is not supported; pass --mode RGB or --mode L "
            f"to convert"
        )
    target = mode or natural
    size = (resolution, resolution) if resolution else image.size
    return Rule(target, size, mode is not None, resolution, where)


def to_array(image: Any, rule: Rule, where: str) -> np.ndarray:
    """A PIL image as uint8 (C, H, W) under ``rule``; StoreError naming ``where``."""
    mode = LOSSLESS.get(image.mode, image.mode)
    if not rule.convert and mode != rule.mode:
        raise StoreError(
            f"{where}: image is {image.mode} but {rule.reference} is {rule.mode}; pass "
            f"--mode RGB or --mode L to convert every image to one mode"
        )
    if image.mode != rule.mode:
        image = image.convert(rule.mode)
    if rule.resolution:
        image = resize_crop(image, rule.resolution)
    elif image.size != rule.size:
        (w, h), (rw, rh) = image.size, rule.size
        raise StoreError(
            f"{where}: image is {w}x{h} but {rule.reference} is {rw}x{rh}; pass "
            f"--resolution R to resize every image to R x R"
        )
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def decode_file(path: str, rule: Rule) -> np.ndarray:
    return to_array(open_image(path), rule, path)
