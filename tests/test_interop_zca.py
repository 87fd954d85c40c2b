"""`--zca-from`: the ZCA whitening of trajectory-matching code, rebuilt from real data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import habactl.cli.main  # noqa: F401  (registers the subcommands)
from habactl.cli.app import app
from habactl.data import load_source
from habactl.format import open_archive
from habactl.interop.zca import fit_zca, whiten_like_kornia
from habactl.training.dataset import HabaDataset
from helpers import one_error_line

runner = CliRunner()


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def kornia_formula(images: torch.Tensor, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """kornia's zca_mean as its documentation states it: unbiased covariance of the
    flattened, mean-centred data, SVD, T = U diag(1/sqrt(S + eps)) U^T."""
    x = images.reshape(images.shape[0], -1).double().numpy()
    mean = x.mean(axis=0)
    centred = x - mean
    cov = centred.T @ centred / (x.shape[0] - 1)
    u, s, _ = np.linalg.svd(cov)
    return u @ np.diag(1.0 / np.sqrt(s + eps)) @ u.T, mean


def real_digits() -> torch.Tensor:
    return load_source("digits").train.images


def test_fit_matches_kornias_formula():
    images = real_digits()
    fit = fit_zca(images, eps=0.1)
    matrix, mean = kornia_formula(images, 0.1)
    assert np.allclose(fit.matrix.double().numpy(), matrix, atol=1e-5)
    assert np.allclose(fit.mean_image.numpy(), mean)
    assert torch.allclose(fit.matrix, fit.matrix.T)  # symmetric, as kornia's is


def test_zca_import_matches_the_whitening_up_to_a_constant(tmp_path):
    images = real_digits()
    fit = fit_zca(images)
    whitened = whiten_like_kornia(images[:40], fit)  # what MTT trains on and saves
    labels = torch.arange(10).repeat_interleave(4)
    torch.save(whitened, tmp_path / "images_best.pt")
    torch.save(labels, tmp_path / "labels_best.pt")
    out = tmp_path / "zca.haba"
    result = run("import", "mtt", tmp_path, "--zca-from", "digits", "-o", out)
    assert result.exit_code == 0, result.output
    assert "eps 0.1" in result.stderr
    with open_archive(out) as archive:
        normalization = archive.manifest["normalization"]
        matrix = archive.tensor("normalization.zca")
    assert normalization["kind"] == "zca" and normalization["eps"] == 0.1
    assert normalization["std"] == [1.0] and matrix.shape == (64, 64)
    # The archive poses MTT's problem moved by one constant vector c: the stored training
    # images and the archive's transform of real test images are both shifted by c.
    shift = fit.offset.float().view(1, 1, 8, 8)
    train, _ = HabaDataset(out).tensors()
    assert torch.allclose(train, whitened + shift, atol=1e-5)
    test = load_source("digits").test.images[:50]
    ours = HabaDataset(out).test_transform()(test)
    assert torch.allclose(ours, whiten_like_kornia(test, fit) + shift, atol=1e-4)
    assert float(shift.abs().max()) == pytest.approx(fit.residual)


def test_zca_from_pixel_layouts_is_refused(tmp_path):
    images = real_digits()[:20]
    torch.save([images, torch.arange(10).repeat_interleave(2)], tmp_path / "data.pt")
    line = one_error_line(
        run(
            "import", "idc", tmp_path / "data.pt", "--zca-from", "digits", "-o", tmp_path / "x.haba"
        )
    )
    assert "--zca-from" in line
    assert not (tmp_path / "x.haba").exists()
