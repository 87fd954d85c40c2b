"""Rebuild the ZCA whitening of trajectory-matching code from real training data.

MTT (and HaBa, DATM, built on it) fit ``kornia.enhance.ZCAWhitening(eps=0.1)`` on the
training images as ``ToTensor`` gives them (pixels in [0, 1], no mean/std step) and
whiten every image as ``(x - mu) @ T``: ``mu`` is the per-pixel mean image, and
``T = U diag(1 / sqrt(S + eps)) U^T`` from the SVD of the unbiased (N - 1) covariance,
so ``T`` is symmetric. This module computes the same ``T`` (in float64, stored as
float32) without kornia.

A .haba archive stores ``Z`` and a per-channel ``mean``/``std`` and maps a real image
``x`` to ``Z · ((x - mean) / std)`` (format/SPEC.md §3.3): there is no per-pixel offset.
With ``std = 1`` and ``Z = T`` the archive's space is MTT's shifted by one constant
vector ``c = T (mu - mean)``: ``mean`` is chosen per channel to make ``c`` as small as
possible (least squares), and the importer adds ``c`` to the stored synthetic images
when no stage sits between them and the network, so that training and test images are
shifted alike and the archive poses exactly MTT's problem, moved by ``c``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

MTT_EPS = 0.1
_CHUNK = 4096


@dataclass(frozen=True)
class ZcaFit:
    matrix: Tensor  # (D, D) float32, symmetric
    mean_image: Tensor  # (D,) float64, the per-pixel mean kornia subtracts
    channel_mean: list[float]  # the per-channel mean the archive stores
    offset: Tensor  # (D,) float64: c = T (mu - m), the archive's space minus MTT's
    eps: float

    @property
    def residual(self) -> float:
        """max |c|, in whitened units."""
        return float(self.offset.abs().max())


def fit_zca(images: Any, eps: float = MTT_EPS) -> ZcaFit:
    """``images`` (N, C, H, W) in [0, 1]; the fit kornia's ZCAWhitening makes.

    A tensor, or a store's images (``habactl.data.stored``), which are read in chunks,
    twice (the mean, then the covariance): memory holds the (D, D) matrices and one
    chunk, whatever N."""
    n, c, h, w = images.shape
    if n < 2:
        raise ValueError("a ZCA fit needs at least two images")
    chunks: Callable[[], Iterator[Tensor]]
    if isinstance(images, Tensor):
        flat = images.reshape(n, -1)
        mean = flat.sum(0, dtype=torch.float64) / n

        def chunks() -> Iterator[Tensor]:
            return iter(flat.split(_CHUNK))
    else:

        def chunks() -> Iterator[Tensor]:
            return (images[s : s + _CHUNK].reshape(-1, c * h * w) for s in range(0, n, _CHUNK))

        mean = torch.zeros(c * h * w, dtype=torch.float64)
        for chunk in chunks():
            mean += chunk.sum(0, dtype=torch.float64)
        mean /= n
    cov = torch.zeros(c * h * w, c * h * w, dtype=torch.float64)
    for chunk in chunks():
        centred = chunk.to(torch.float64) - mean
        cov += centred.T @ centred
    cov /= n - 1  # kornia's default: unbiased
    # kornia takes the SVD of the covariance; for a symmetric positive semi-definite
    # matrix that is its eigendecomposition with |eigenvalues| (eigh is faster).
    values, vectors = torch.linalg.eigh(cov)
    scale = (values.abs() + eps).rsqrt()
    matrix = (vectors * scale) @ vectors.T
    channel_mean, offset = _best_channel_mean(matrix, mean, c, h * w)
    return ZcaFit(matrix.to(torch.float32).contiguous(), mean, channel_mean, offset, eps)


def _best_channel_mean(
    matrix: Tensor, mean: Tensor, channels: int, pixels: int
) -> tuple[list[float], Tensor]:
    # Minimise |T (mu - P m)| over the per-channel m; P spreads channel c over its pixels.
    spread = torch.zeros(channels * pixels, channels, dtype=torch.float64)
    for ch in range(channels):
        spread[ch * pixels : (ch + 1) * pixels, ch] = 1.0
    a, b = matrix @ spread, matrix @ mean
    m = torch.linalg.lstsq(a, b.unsqueeze(1)).solution.squeeze(1)
    return [float(v) for v in m], b - a @ m


def whiten_like_kornia(images: Tensor, fit: ZcaFit) -> Tensor:
    """``(x - mu) @ T``: what the trajectory-matching code feeds its networks."""
    flat = images.reshape(images.shape[0], -1).to(torch.float64) - fit.mean_image
    return (flat @ fit.matrix.to(torch.float64)).to(torch.float32).reshape(images.shape)
