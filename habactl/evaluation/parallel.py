"""Train and score many networks, one after another or in worker processes.

Every network of an evaluation is independent (model i of an arm is seeded with
seed + i), so on a CPU they can train side by side, one process per core. The batches
are tiny, so one process per core with one thread each uses a multi-core CPU far better
than one process with many threads; and since each network's numbers depend only on its
seed and its thread count, the results are the same whichever way they were run.
"""

from __future__ import annotations

import ctypes
import functools
import multiprocessing
import os
import queue
import signal
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from habactl.errors import HabaError
from habactl.evaluation.protocol import Protocol
from habactl.runtime.distributed import SINGLE, Collective

# progress(arm, arch, model, models, epoch, epochs): model and epoch are 0-based and
# epoch == epochs once a model is trained and scored.
Progress = Callable[[str, str, int, int, int, int], None]


@dataclass(frozen=True)
class ModelTask:
    """One network to train from scratch and score on the real test split."""

    arm: str
    arch: str
    model: int
    models: int
    images: Tensor
    labels: Tensor
    protocol: Protocol
    lr: float
    test_images: Tensor
    test_labels: Tensor
    num_classes: int
    flip: bool
    device: str
    teacher: str | None = None  # a teacher file: its outputs are the kd targets (online)
    views: Any | None = None  # per-crop views and labels (CropViews): augmentation + targets

    @property
    def seed(self) -> int:
        return self.protocol.seed + self.model


@dataclass(frozen=True)
class ModelScore:
    accuracy: float  # percent, final epoch
    seconds: float


def default_jobs(device: torch.device, tasks: int) -> int:
    """One process per usable CPU core (at most one per network); one on a GPU."""
    if device.type != "cpu":
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, tasks))


def train_and_score(task: ModelTask, on_epoch: Callable[[int], None] | None = None) -> ModelScore:
    """Train task's network with its protocol and return its final-epoch test accuracy."""
    from habactl.evaluation.score import accuracy
    from habactl.evaluation.train import make_augment, train_net
    from habactl.nets import build_net

    started = time.perf_counter()
    device = torch.device(task.device)
    channels, height, width = (int(s) for s in task.images.shape[1:])
    torch.manual_seed(task.seed)
    net = build_net(task.arch, channels, height, width, task.num_classes).to(device)
    callback = None if on_epoch is None else (lambda epoch, _optimizer: on_epoch(epoch))
    teacher = None
    if task.teacher is not None:
        from habactl.teacher.file import load_teacher

        teacher = load_teacher(task.teacher, device=device)
    train_net(
        net,
        task.images.to(device),
        task.labels.to(device),
        task.protocol,
        lr=task.lr,
        augment=make_augment(task.protocol, flip=task.flip),
        generator=torch.Generator().manual_seed(task.seed),
        on_epoch=callback,
        teacher=teacher,
        views=task.views,
    )
    score = 100.0 * accuracy(
        net,
        task.test_images,
        task.test_labels,
        batch_size=task.protocol.test_batch_size,
        device=device,
    )
    return ModelScore(score, time.perf_counter() - started)


def run_tasks(
    tasks: Sequence[ModelTask],
    *,
    jobs: int = 1,
    threads: int = 1,
    progress: Progress | None = None,
    collective: Collective = SINGLE,
) -> list[ModelScore]:
    """Scores of `tasks`, in their order; `jobs` > 1 trains them in that many processes,
    and the ranks of `collective` share them."""
    if jobs < 1:
        raise HabaError(f"jobs must be a positive integer, got {jobs!r}")
    report = _reporter(tasks, progress)
    for index in range(len(tasks)):  # announce every network first: totals for the bar
        report(index, 0)
    if collective.world_size > 1:
        # Under torchrun each rank trains every world-th network (each keeps its own
        # seed, so its score is the one a single process gets) and all gather the scores.
        share = collective.share(len(tasks))
        mine = _run_local([tasks[i] for i in share], jobs, threads, report, share)
        merged = collective.gather_objects(dict(zip(share, mine)))
        for index in range(len(tasks)):
            report(index, tasks[index].protocol.epochs)
        return [merged[index] for index in range(len(tasks))]
    return _run_local(tasks, jobs, threads, report, list(range(len(tasks))))


def _run_local(
    tasks: Sequence[ModelTask],
    jobs: int,
    threads: int,
    outer: Callable[[int, int], None],
    indices: list[int],
) -> list[ModelScore]:
    """Scores of `tasks` in this process (or its workers); `indices` name them in `report`."""

    def report(index: int, epoch: int) -> None:
        outer(indices[index], epoch)

    if not tasks:
        return []
    if jobs == 1 or len(tasks) <= 1:
        scores = []
        for index, task in enumerate(tasks):
            scores.append(train_and_score(task, on_epoch=functools.partial(report, index)))
            report(index, task.protocol.epochs)
        return scores
    return _run_in_processes(tasks, min(jobs, len(tasks)), threads, report)


def _reporter(tasks: Sequence[ModelTask], progress: Progress | None) -> Callable[[int, int], None]:
    """progress() per task, never going backwards (a worker's last epoch message may
    arrive after its result)."""
    reached = [-1] * len(tasks)

    def report(index: int, epoch: int) -> None:
        if progress is None or epoch <= reached[index]:
            return
        reached[index] = epoch
        task = tasks[index]
        progress(task.arm, task.arch, task.model, task.models, epoch, task.protocol.epochs)

    return report


# Worker-side state, set once per process by the pool's initializer.
_EPOCHS: Any = None


def _start_worker(epochs: Any, threads: int, parent: int) -> None:
    global _EPOCHS
    _die_with(parent)
    _EPOCHS = epochs
    torch.set_num_threads(threads)


def _die_with(parent: int) -> None:
    """On Linux, ask for SIGTERM when the process that started this worker dies: a
    parent killed outright (SIGTERM, SIGKILL) runs no clean-up, and its workers would
    train on, unseen, until their networks were done. Elsewhere: nothing to ask."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the request was made
        os._exit(1)


def _worker(index: int, task: ModelTask) -> ModelScore:
    return train_and_score(task, on_epoch=lambda epoch: _EPOCHS.put((index, epoch)))


def _run_in_processes(
    tasks: Sequence[ModelTask], jobs: int, threads: int, report: Callable[[int, int], None]
) -> list[ModelScore]:
    # spawn, not fork: a forked child of a process that has used torch's thread pool
    # can hang in its first parallel region.
    context = multiprocessing.get_context("spawn")
    epochs = context.Queue()
    scores: dict[int, ModelScore] = {}
    with ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=context,
        initializer=_start_worker,
        initargs=(epochs, threads, os.getpid()),
    ) as pool:
        pending: dict[Future[ModelScore], int] = {
            pool.submit(_worker, index, task): index for index, task in enumerate(tasks)
        }
        try:
            while pending:
                done, _ = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                _drain(epochs, report)
                for future in done:
                    index = pending.pop(future)
                    scores[index] = future.result()  # re-raises a worker's error here
                    report(index, tasks[index].protocol.epochs)
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    return [scores[index] for index in range(len(tasks))]


def _drain(epochs: Any, report: Callable[[int, int], None]) -> None:
    while True:
        try:
            index, epoch = epochs.get_nowait()
        except queue.Empty:
            return
        report(index, epoch)


__all__ = ["ModelScore", "ModelTask", "Progress", "default_jobs", "run_tasks", "train_and_score"]
