"""Turning raw arrays (from HDF5, npz, torchvision) into contract tensors."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from habactl.data.base import DataError

# A channel axis is recognised only by its size: grayscale or RGB.
_CHANNEL_SIZES = (1, 3)


def images_from_array(array: np.ndarray, where: str) -> Tensor:
    """(N, H, W), (N, C, H, W) or (N, H, W, C) array -> float32 (N, C, H, W) in [0, 1].

    uint8 is scaled by 1/255; floating point is taken as already in [0, 1] (validation
    rejects anything else). For 4-D arrays the channel axis is axis 1 when its size is
    1 or 3 (NCHW), otherwise axis 3 when its size is 1 or 3 (NHWC); NCHW wins a tie.
    """
    array = np.asarray(array)
    if array.ndim == 3:
        array = array[:, None, :, :]
    elif array.ndim == 4:
        if array.shape[1] not in _CHANNEL_SIZES:
            if array.shape[3] not in _CHANNEL_SIZES:
                raise DataError(
                    f"{where}: cannot tell the channel axis of images shaped "
                    f"{array.shape}; expected NCHW or NHWC with 1 or 3 channels"
                )
            array = array.transpose(0, 3, 1, 2)
    else:
        raise DataError(
            f"{where}: images must be (N, H, W), (N, C, H, W) or (N, H, W, C), "
            f"got shape {array.shape}"
        )
    if array.dtype == np.uint8:
        out = torch.from_numpy(np.ascontiguousarray(array)).to(torch.float32)
        return out.div_(255.0)
    if np.issubdtype(array.dtype, np.floating):
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    raise DataError(
        f"{where}: images have dtype {array.dtype}; store uint8 (0-255) or float in [0, 1]"
    )


def labels_from_array(array: np.ndarray, where: str) -> Tensor:
    """Integer labels shaped (N,) or (N, 1) -> int64 (N,)."""
    array = np.asarray(array)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise DataError(f"{where}: labels must be shaped (N,), got {array.shape}")
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise DataError(f"{where}: labels must be integers, got dtype {array.dtype}")
    if array.size and array.min() < 0:
        raise DataError(f"{where}: label {int(array.min())} is negative")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))


def class_names(raw, num_labels: int, where: str) -> list[str]:
    """Class names from an optional stored list, else "0", "1", ... up to the labels."""
    if raw is None:
        return [str(i) for i in range(num_labels)]
    names = []
    for item in np.asarray(raw).reshape(-1).tolist():
        names.append(item.decode("utf-8") if isinstance(item, bytes) else str(item))
    if len(names) < num_labels:
        raise DataError(f"{where}: {len(names)} class names but labels go up to {num_labels - 1}")
    return names


def num_labels(*labels: Tensor) -> int:
    """One more than the largest label seen (0 if there are none)."""
    top = max((int(lab.max()) for lab in labels if lab.numel()), default=-1)
    return top + 1
