"""Shared helpers and fixtures: small real archives made through the public API, tiny
real data, the one-line error check of the CLI, a one-thread torch.

Test modules import the plain helpers by name (``from conftest import one_error_line``);
fixtures need no import.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from habactl.data.base import LabeledImages, make_source
from habactl.distill.archive import write_haba
from habactl.format.normalization import mean_std


def one_error_line(result, exit_code: int = 1) -> str:
    """The stderr of a failed command: exit status ``exit_code`` (1: a HabaError), exactly
    one line, ``habactl: error: ...``, and no traceback anywhere in the output. Returns
    that line for the caller's own checks."""
    assert result.exit_code == exit_code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("habactl: error: ")
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """Whatever a test does to torch's thread count (an in-process `--threads 1`), the next
    test starts from the count before it: the count is part of a run's settings, so a leak
    would make a later `--resume` in this process refuse its checkpoint."""
    before = torch.get_num_threads()
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny batches on a shared CPU run many times faster on one thread (no spinning
    workers). Use per module: ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.cache
def tiny_mnist(classes: int = 3, train_per_class: int = 20, test_per_class: int = 5):
    """The first `classes` digits of mnist-5k, `train_per_class` training images each."""
    from habactl.data import load_source

    full = load_source("mnist-5k")

    def take(split: LabeledImages, per: int) -> LabeledImages:
        picks = torch.cat(
            [torch.nonzero(split.labels == k).flatten()[:per] for k in range(classes)]
        )
        return LabeledImages(images=split.images[picks].clone(), labels=split.labels[picks].clone())

    return make_source(
        f"mnist-5k-{classes}",
        full.classes[:classes],
        take(full.train, train_per_class),
        take(full.test, test_per_class),
        is_digits=True,
    )


def fake_source(shape=(1, 8, 8), classes=3) -> SimpleNamespace:
    channels, height, width = shape
    return SimpleNamespace(
        name="fixture",
        fingerprint="sha256:" + "ab" * 32,
        classes=[f"class-{c}" for c in range(classes)],
        channels=channels,
        height=height,
        width=width,
    )


def hallucinate_stage(count: int = 3, arch: str = "channel-affine") -> dict:
    return {
        "name": "hallucinate",
        "version": 1,
        "configuration": {"arch": arch, "count": count, "hidden": 3, "kernel": 3},
    }


@pytest.fixture
def make_archive(tmp_path: Path) -> Callable[..., Path]:
    """Factory: an archive of `per_class` random bases per class, with or without hallucinators."""
    from habactl.codecs import Pipeline

    def build(
        name: str = "a.haba",
        *,
        shape=(1, 8, 8),
        classes: int = 3,
        per_class: int = 2,
        stages: list[dict] | None = None,
        learned_lr: float | None = None,
        mean: float = 0.5,
        std: float = 0.25,
        seed: int = 0,
    ) -> Path:
        generator = torch.Generator().manual_seed(seed)
        base_shape = shape
        stages = [] if stages is None else stages
        if stages and stages[0]["name"] == "upsample":
            factor = stages[0]["configuration"]["factor"]
            base_shape = (shape[0], shape[1] // factor, shape[2] // factor)
        bases = torch.randn(classes * per_class, *base_shape, generator=generator)
        labels = torch.arange(classes).repeat_interleave(per_class)
        pipeline = Pipeline.from_manifest(stages, base_shape)
        with torch.no_grad():
            for parameter in pipeline.parameters():
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
        return write_haba(
            tmp_path / name,
            source=fake_source(shape, classes),
            bases=bases,
            labels=labels,
            pipeline=pipeline,
            normalization=mean_std([mean] * shape[0], [std] * shape[0]),
            objective="random",
            hyperparameters={"per_class": per_class},
            iterations=0,
            seed=seed,
            ipc=per_class,
            learned_lr=learned_lr,
        )

    return build
