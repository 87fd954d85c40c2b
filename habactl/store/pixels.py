"""Pixels into the store's one layout: uint8 (N, C, H, W); the resize rule.

Arrays may be (N, H, W), (N, C, H, W) or (N, H, W, C), uint8 or float in [0, 1]
(the rule of habactl.data.arrays). Float pixels are stored as round(255 x).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from habactl.store.layout import StoreError

_CHANNEL_SIZES = (1, 3)
RESIZE_RULE = (
    "shorter side resized to the resolution (PIL bilinear, antialiased), then the centre "
    "square cropped"
)


def array_layout(shape: tuple[int, ...], where: str) -> str:
    """``NHW``, ``NCHW`` or ``NHWC`` for an image array's shape; NCHW wins a tie."""
    if len(shape) == 3:
        return "NHW"
    if len(shape) == 4:
        if shape[1] in _CHANNEL_SIZES:
            return "NCHW"
        if shape[3] in _CHANNEL_SIZES:
            return "NHWC"
        raise StoreError(
            f"{where}: cannot tell the channel axis of images shaped {tuple(shape)}; "
            f"expected NCHW or NHWC with 1 or 3 channels"
        )
    raise StoreError(
        f"{where}: images must be (N, H, W), (N, C, H, W) or (N, H, W, C), got shape {tuple(shape)}"
    )


def image_shape(shape: tuple[int, ...], layout: str) -> tuple[int, int, int]:
    """(C, H, W) of one image of an array shaped ``shape``."""
    if layout == "NHW":
        return (1, int(shape[1]), int(shape[2]))
    if layout == "NCHW":
        return (int(shape[1]), int(shape[2]), int(shape[3]))
    return (int(shape[3]), int(shape[1]), int(shape[2]))


def check_dtype(dtype: Any, where: str) -> None:
    dtype = np.dtype(dtype)
    if dtype != np.uint8 and not np.issubdtype(dtype, np.floating):
        raise StoreError(
            f"{where}: images have dtype {dtype}; store uint8 (0-255) or float in [0, 1]"
        )


def to_uint8_nchw(chunk: np.ndarray, layout: str, where: str) -> np.ndarray:
    """A chunk of images in ``layout`` as contiguous uint8 (n, C, H, W)."""
    chunk = np.asarray(chunk)
    if layout == "NHW":
        chunk = chunk[:, None]
    elif layout == "NHWC":
        chunk = chunk.transpose(0, 3, 1, 2)
    if chunk.dtype == np.uint8:
        return np.ascontiguousarray(chunk)
    check_dtype(chunk.dtype, where)
    if chunk.size:
        low, high = float(chunk.min()), float(chunk.max())
        if not (np.isfinite(low) and np.isfinite(high)):
            raise StoreError(f"{where}: images contain NaN or Inf")
        if low < 0.0 or high > 1.0:
            raise StoreError(
                f"{where}: float pixel values must lie in [0, 1], found [{low:g}, {high:g}]"
            )
    return np.ascontiguousarray(np.rint(chunk.astype(np.float64) * 255.0).astype(np.uint8))


def convert_mode(chunk: np.ndarray, mode: str) -> np.ndarray:
    """uint8 (n, C, H, W) as ``mode``: L (PIL's luma, ITU-R 601-2) or RGB (grey repeated)."""
    channels = chunk.shape[1]
    if mode == "RGB" and channels == 1:
        return np.ascontiguousarray(np.repeat(chunk, 3, axis=1))
    if mode == "L" and channels == 3:
        # PIL's integer formula, so that an array and the same image as a file agree.
        weights = np.array([19595, 38470, 7471], dtype=np.uint32).reshape(1, 3, 1, 1)
        luma = (chunk.astype(np.uint32) * weights).sum(axis=1, keepdims=True) + 0x8000
        return (luma >> 16).astype(np.uint8)
    return chunk


def resized_shape(height: int, width: int, resolution: int) -> tuple[int, int]:
    """(height, width) after the shorter side is scaled to ``resolution`` (the longer
    side truncated, as torchvision's Resize(int) does)."""
    if width <= height:
        return int(resolution * height / width), resolution
    return resolution, int(resolution * width / height)


def resize_crop(image: Any, resolution: int) -> Any:
    """A PIL image with its shorter side resized to ``resolution`` (bilinear, which PIL
    antialiases when it shrinks) and the centre ``resolution`` square cropped: the same
    pixels as torchvision's Resize(resolution) then CenterCrop(resolution) on PIL images."""
    from PIL import Image

    width, height = image.size
    new_h, new_w = resized_shape(height, width, resolution)
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    top = int(round((new_h - resolution) / 2.0))
    left = int(round((new_w - resolution) / 2.0))
    return image.crop((left, top, left + resolution, top + resolution))


def resize_chunk(chunk: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 (n, C, H, W) images through :func:`resize_crop`, one by one."""
    from PIL import Image

    n, channels = chunk.shape[:2]
    out = np.empty((n, channels, resolution, resolution), dtype=np.uint8)
    for i in range(n):
        pixels = chunk[i, 0] if channels == 1 else chunk[i].transpose(1, 2, 0)
        image = resize_crop(Image.fromarray(np.ascontiguousarray(pixels)), resolution)
        array = np.asarray(image, dtype=np.uint8)
        out[i] = array[None] if channels == 1 else array.transpose(2, 0, 1)
    return out
