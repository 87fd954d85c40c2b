"""Running one command on N processes launched by ``torchrun`` (torch.distributed).

``torchrun --nproc-per-node N -m habactl CMD ...`` starts N copies of the same command
line with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in their
environment. :func:`launch` (called by the CLI entry point when WORLD_SIZE is set) joins
them in one process group (NCCL on CUDA, gloo on the CPU), pins each rank to its local
GPU, silences every rank but rank 0, and tears the group down on success, error and
Ctrl-C. The job's :class:`Collective` (a :class:`Torchrun` while the group is up, else
:data:`SINGLE`, one process of rank 0 whose collectives are the identity) is what the
commands split their work with. The CLI's commands ask for it once (:func:`current`) and
hand it down: the engine, the objectives, the experts and the evaluation take it as a
parameter, so their one-process path reads without the torchrun one and no library code
looks it up. Nothing here imports torch unless a process group is started.

An error on any rank ends the job: that rank prints one ``habactl: error: rank R/N: ...``
line (only the first rank to fail prints, so an input error shared by every rank is one
line), exits non-zero, and torchrun stops the others. Every collective has a timeout
(``HABACTL_DIST_TIMEOUT`` seconds, 300 by default), so a rank whose peer vanished
without torchrun's help fails instead of hanging; the wait for the peers' share of the
work (:func:`wait_for_peers`) lasts as long as their heartbeats go on. A job restarted
by ``torchrun --max-restarts`` gets a fresh key space in the store that outlives its
attempts (docs/scaling.md, "Errors, Ctrl-C, hangs").
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from typing import Any, TextIO

from habactl.errors import HabaError

TIMEOUT_VARIABLE = "HABACTL_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 300.0

# The job `launch` joined for the one command this process runs (None: no torchrun job).
# Only the CLI reads it, through `current()` and the error reporting below; the rest of
# the package is handed the collective.
_job: Torchrun | None = None


class JobError(HabaError):
    """An error that every rank raises together (the outcome of a collective check):
    rank 0 alone reports it, with no race for the error counter."""


def launched() -> bool:
    """True when this process was started by torchrun (or an equivalent launcher)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


class Collective:
    """One process: rank 0 of 1, every collective the identity (no torch.distributed).

    :class:`Torchrun` answers the same calls for a rank of a process group; code handed
    a collective splits its work by ``rank`` / ``world_size`` and exchanges results
    through these methods, whichever it is."""

    rank = 0
    world_size = 1
    local_rank = 0

    @property
    def is_main(self) -> bool:
        """Whether this process prints and writes the outputs (rank 0)."""
        return self.rank == 0

    def share(self, count: int) -> list[int]:
        """The indices of `count` work items this rank takes: i with i % world == rank."""
        return list(range(self.rank, count, self.world_size))

    def device_for(self, name: str) -> Any:
        """The device of this rank for a ``--device`` name (resolve_device's)."""
        from habactl.runtime import device as runtime

        return runtime.resolve_device(name)

    def gather_objects(self, mine: dict[int, Any]) -> dict[int, Any]:
        """Every rank's ``{index: result}`` merged, on every rank."""
        return dict(mine)

    def barrier(self) -> None:
        """Every rank reaches this point before any goes on."""

    def sum_floats(self, values: list[float]) -> list[float]:
        """Each number summed over the ranks (in float64), the same list on every rank."""
        return list(values)

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any (a Ctrl-C seen by one rank)."""
        return flag

    def check_same_start(self, iteration: int) -> None:
        """Every rank must start (or resume) at the same iteration (JobError if not)."""

    def all_reduce_sum(self, tensors: list[Any]) -> None:
        """Sum each tensor over the ranks, in place (gradients of shared tensors)."""

    def wait_for_peers(self, tag: str) -> None:
        """Wait until every rank has reached this point (see :meth:`Torchrun.wait_for_peers`)."""


SINGLE = Collective()


def current() -> Collective:
    """The collective of the job this process runs in: SINGLE outside torchrun. For the
    CLI's commands, which hand it down to the library."""
    return _job if _job is not None else SINGLE


def timeout_seconds() -> float:
    value = os.environ.get(TIMEOUT_VARIABLE, "")
    try:
        seconds = float(value) if value else DEFAULT_TIMEOUT_S
    except ValueError:
        seconds = DEFAULT_TIMEOUT_S
    return seconds if seconds > 0 else DEFAULT_TIMEOUT_S


def print_error(message: str, *, every_rank: bool = False) -> None:
    """``habactl: error: MESSAGE`` on stderr, once for the job.

    Under torchrun the line goes to the real stderr (even on a silenced rank), names the
    rank, and is printed by the first rank to fail only; `every_rank`: the error is one
    that every rank raises alike, so rank 0 alone prints it (without a race for the
    store, which rank 0 may already have taken down when the others ask)."""
    job = _job
    if job is None:
        print(f"habactl: error: {message}", file=sys.stderr)
        return
    first = job.is_main if every_rank else claim_error()
    if first:
        print(f"habactl: error: {error_prefix()}{message}", file=job.stderr)


def error_prefix() -> str:
    """``rank R/N: `` under torchrun, so the one error line says which rank failed (and
    ``rank R/N, attempt A of M: `` when ``--max-restarts`` lets torchrun try again)."""
    job = _job
    if job is None:
        return ""
    where = f"rank {job.rank}/{job.world_size}"
    restarts = _int_variable("TORCHELASTIC_MAX_RESTARTS")
    if restarts > 0:
        attempt = _int_variable("TORCHELASTIC_RESTART_COUNT") + 1
        return f"{where}, attempt {attempt} of {restarts + 1}: "
    return f"{where}: "


def _int_variable(name: str) -> int:
    try:
        return int(os.environ.get(name, "0") or 0)
    except ValueError:
        return 0


# torch.distributed's C++ side (gloo, NCCL, the store) starts its messages with the
# source line that raised them: "[.../gloo/transport/tcp/pair.cc:545] Read error ...".
_SOURCE_LINE = re.compile(r"^\[[^\]\s]+:\d+\]\s*")


def describe_crash(error: BaseException) -> str:
    """One line for an unexpected exception on a rank; a failed collective (a peer that
    died or stopped answering) says so in words instead of gloo's paragraph."""
    text = " ".join(str(error).split())
    message = _SOURCE_LINE.sub("", text)
    if message == text:
        return f"{type(error).__name__}: {text}"
    first = message.split(". ")[0].rstrip(".")
    if "timed out" in first.lower() or "timeout" in first.lower():
        return (
            f"another rank did not answer within {timeout_seconds():g} s "
            f"({TIMEOUT_VARIABLE}); it is stuck or gone ({first})"
        )
    return f"lost the connection to another rank; it crashed or was killed ({first})"


def claim_error() -> bool:
    """True for the first rank to fail (it prints the line); False for later ones.

    Uses the job's key-value store, which torchrun's agent keeps up while ranks die; if
    the store cannot be reached, every rank prints (a second line beats none).
    """
    if _job is None:
        return True
    try:
        # One counter per torchrun attempt: the agent's store outlives a restart.
        return int(_store().add(_key("errors"), 1)) == 1
    except Exception:  # noqa: BLE001 - any failure here means: print anyway
        return True


def _start() -> Torchrun:
    import datetime

    import torch
    import torch.distributed as dist

    cuda = torch.cuda.is_available() and os.environ.get("HABACTL_DIST_BACKEND", "") != "gloo"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    backend = "nccl" if cuda else "gloo"
    timeout = datetime.timedelta(seconds=timeout_seconds())
    if first_attempt():
        dist.init_process_group(backend=backend, timeout=timeout)
    else:
        # torchrun's default (static) rendezvous keeps one key-value store across
        # restarts: a new rank would read the dead attempt's addresses from it and fail
        # to connect, so each attempt gets its own key space.
        store, number, world = next(dist.rendezvous("env://", timeout=timeout))
        attempt = os.environ["TORCHELASTIC_RESTART_COUNT"]
        dist.init_process_group(
            backend=backend,
            store=dist.PrefixStore(f"habactl/attempt-{attempt}", store),
            rank=number,
            world_size=world,
            timeout=timeout,
        )
    return Torchrun(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        stderr=sys.stderr,
    )


def _store() -> Any:
    from torch.distributed import distributed_c10d

    return distributed_c10d._get_default_store()


def _key(name: str) -> str:
    """A key of this torchrun attempt in the job's store (which can outlive an attempt)."""
    return f"habactl/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{name}"


class _Heartbeat:
    """A counter in the job's store that this rank's background thread raises every
    HEARTBEAT_S seconds while the process lives, whatever its main thread is doing: a
    rank waiting for its peers' share of the work (:func:`wait_for_peers`) tells a busy
    peer from a frozen or vanished one by it, with no clock shared between machines."""

    def __init__(self, rank: int) -> None:
        import threading

        self.stop = threading.Event()
        self.key = _key(f"beat/{rank}")
        self.thread = threading.Thread(target=self._beat, name="habactl-heartbeat", daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        store = _store()
        while not self.stop.is_set():
            try:
                store.add(self.key, 1)
            except Exception:  # noqa: BLE001 - the store is gone: the job is ending
                return
            self.stop.wait(heartbeat_seconds())

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=2 * heartbeat_seconds())


def heartbeat_seconds() -> float:
    return min(5.0, timeout_seconds() / 4)


def _stop(clean: bool) -> None:
    global _job
    job = _job
    if job is None:
        return
    job.heartbeat.close()
    _job = None
    try:
        import torch.distributed as dist

        if dist.is_initialized():
            if clean:
                # Every rank reaches the teardown before any leaves: gloo aborts a rank
                # whose peer closed its connections under it.
                dist.barrier()
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - tearing down after an error must not mask it
        pass


def launch(run: Callable[[], Any]) -> None:
    """Run the CLI `run` as one rank of a torchrun job; see the module docstring."""
    global _job
    try:
        job = _job = _start()
    except KeyboardInterrupt:  # Ctrl-C while torch loads or the ranks meet
        if os.environ.get("RANK", "0") == "0":
            print("habactl: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as error:  # noqa: BLE001 - a failed rendezvous is one line too
        print(f"habactl: error: cannot join the torchrun job: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    real_stderr = job.stderr
    quiet = None
    if not job.is_main:  # other ranks print nothing unless an error happens
        quiet = open(os.devnull, "w")  # noqa: SIM115 - closed in finally
        sys.stdout = sys.stderr = quiet
    code: Any = 0
    try:
        run()
    except SystemExit as exit_:
        code = exit_.code
    except KeyboardInterrupt:
        code = 130
        # The first rank to stop says so, whichever it is; a peer that then loses its
        # connection to this rank finds the line taken and stays quiet.
        if claim_error():
            print("habactl: interrupted", file=real_stderr)
    except HabaError as error:
        code = 1
        print_error(str(error), every_rank=isinstance(error, JobError))
    except Exception as error:  # noqa: BLE001 - any rank's crash is one line, not a hang
        code = 1
        if os.environ.get("HABACTL_DEBUG", "") not in ("", "0"):
            import traceback

            traceback.print_exc(file=real_stderr)
        print_error(describe_crash(error))
    finally:
        _stop(clean=code == 0)
        sys.stdout, sys.stderr = sys.__stdout__, real_stderr
        if quiet is not None:
            quiet.close()
    if code is None:
        code = 0
    elif not isinstance(code, int):  # SystemExit("message"): printed, status 1
        print(code, file=real_stderr)
        code = 1
    # Leave without running the interpreter's teardown: with gloo, a background thread
    # of the torn-down group can still be joinable there and abort the process
    # ("terminate called without an active exception"). Every output is written by now.
    for stream in (sys.stdout, real_stderr):
        if stream is not None:
            stream.flush()
    os._exit(code)


def first_attempt() -> bool:
    """False in a job that ``torchrun --max-restarts`` restarted (it counts attempts in
    TORCHELASTIC_RESTART_COUNT); True otherwise, one process included."""
    return os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") in ("", "0")


class Torchrun(Collective):
    """This rank of the process group :func:`launch` started (gloo or NCCL)."""

    def __init__(self, *, rank: int, world_size: int, local_rank: int, stderr: TextIO) -> None:
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.stderr = stderr  # the real stderr: error lines, even once the rank is silenced
        self.gathers = 0
        self.heartbeat = _Heartbeat(rank)

    def device_for(self, name: str) -> Any:
        """Its local GPU for a CUDA device."""
        import torch

        device = super().device_for(name)
        return torch.device("cuda", self.local_rank) if device.type == "cuda" else device

    def gather_objects(self, mine: dict[int, Any]) -> dict[int, Any]:
        import torch.distributed as dist

        # The ranks arrive when their share is done, minutes apart: wait on heartbeats, so
        # that the exchange itself is all the collective timeout has to cover.
        self.gathers += 1
        self.wait_for_peers(f"gather-{self.gathers}")
        parts: list[Any] = [None] * self.world_size
        dist.all_gather_object(parts, mine)
        merged: dict[int, Any] = {}
        for part in parts:
            merged.update(part)
        return merged

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def sum_floats(self, values: list[float]) -> list[float]:
        import torch
        import torch.distributed as dist

        total = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return [float(v) for v in total]

    def any_rank(self, flag: bool) -> bool:
        import torch
        import torch.distributed as dist

        value = torch.tensor([int(flag)], dtype=torch.int64)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def check_same_start(self, iteration: int) -> None:
        """A checkpoint that some ranks see and others do not (not on a shared file
        system) is an error, not a silent divergence."""
        import torch
        import torch.distributed as dist

        bounds = torch.tensor([iteration, -iteration], dtype=torch.int64)
        dist.all_reduce(bounds, op=dist.ReduceOp.MAX)
        high, low = int(bounds[0]), -int(bounds[1])
        if high != low:
            raise JobError(
                f"the ranks start at different iterations ({low} to {high}): every rank "
                f"must read the same checkpoint; put it on a file system that every "
                f"machine sees"
            )

    def all_reduce_sum(self, tensors: list[Any]) -> None:
        import torch.distributed as dist

        for tensor in tensors:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)

    def wait_for_peers(self, tag: str) -> None:
        """Wait until every rank has reached this point, as long as their heartbeats go on.

        The collectives' timeout bounds one exchange; the wait for the others to finish
        their share of the work (networks, experts: minutes each, unevenly split) has no
        bound but fails within ``timeout_seconds()`` of a peer's last heartbeat.
        """
        import time

        store = _store()
        store.set(_key(f"{tag}/done/{self.rank}"), "1")
        others = [r for r in range(self.world_size) if r != self.rank]
        last: dict[int, tuple[int, float]] = {r: (-1, time.monotonic()) for r in others}
        while True:
            pending = [r for r in others if not store.check([_key(f"{tag}/done/{r}")])]
            if not pending:
                return
            now = time.monotonic()
            for peer in pending:
                beats = int(store.add(_key(f"beat/{peer}"), 0))
                if beats != last[peer][0]:
                    last[peer] = (beats, now)
                elif now - last[peer][1] > timeout_seconds():
                    raise HabaError(
                        f"rank {peer} gave no sign of life for {timeout_seconds():g} s "
                        f"({TIMEOUT_VARIABLE}) while this rank waited for its share of the "
                        f"work; it is stuck or gone"
                    )
            time.sleep(min(1.0, heartbeat_seconds()))


__all__ = [
    "SINGLE",
    "Collective",
    "JobError",
    "Torchrun",
    "current",
    "error_prefix",
    "first_attempt",
    "launch",
    "launched",
    "print_error",
]
