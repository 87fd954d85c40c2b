"""The suite's fixtures and hooks: torch's thread count restored after every test, a
one-thread torch for modules of tiny batches, small real archives made through the public
API. Fixtures need no import; the plain helpers are in helpers.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from habactl.distill.archive import write_haba
from habactl.format.normalization import mean_std
from helpers import fake_source


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
