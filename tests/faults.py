"""``python tests/faults.py ARGS``: habactl's command line (``python -m habactl ARGS``)
with the faults of the crash tests, chosen by environment variables.

The package ships no test hooks. A test that needs a crash at a given point runs this
file instead of ``-m habactl`` (directly, or as torchrun's script), and it wraps the one
method where the fault belongs before the command starts: no import hook, no
sitecustomize, nothing installed when no fault variable is set. The faults fire on the
first attempt only, so that a job restarted by ``torchrun --max-restarts`` runs through.

- ``HABACTL_FAULT_KILL_AFTER=N``: SIGKILL the process right after iteration N of a
  distillation (and its checkpoint, if one falls due): a real kill, not an exception.
  With ``HABACTL_FAULT_KILL_RANK=R`` only rank R of a torchrun job is killed.
- ``HABACTL_DIST_FAIL_RANK=R``: rank R raises just before a collective (a gather of
  results, or the gradients' sum), while its peers wait in it.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

KILL_AFTER_VARIABLE = "HABACTL_FAULT_KILL_AFTER"
KILL_RANK_VARIABLE = "HABACTL_FAULT_KILL_RANK"
FAIL_VARIABLE = "HABACTL_DIST_FAIL_RANK"
VARIABLES = (KILL_AFTER_VARIABLE, KILL_RANK_VARIABLE, FAIL_VARIABLE)
SCRIPT = Path(__file__).resolve()


def _first_attempt() -> bool:
    return os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") in ("", "0")


def _this_rank(variable: str) -> bool:
    """Whether the rank named by `variable` (every rank when it is unset) is this one."""
    only = os.environ.get(variable, "")
    return not only or only == os.environ.get("RANK", "0")


def install_kill_after(after: int) -> None:
    """Kill the run as the iteration after `after` starts: the loop has logged iteration
    `after`, saved its checkpoint when one was due and agreed with the peers to go on."""
    from habactl.distill.engine import Distiller

    step = Distiller.step

    def killing_step(self: Distiller) -> dict[str, float]:
        if self.iteration == after:
            os.kill(os.getpid(), signal.SIGKILL)
        return step(self)

    Distiller.step = killing_step  # type: ignore[method-assign]


def install_failure(rank: str) -> None:
    """Rank `rank` of a torchrun job raises as it enters a gather or a gradient sum."""
    from habactl.runtime.distributed import Torchrun

    def failing(method):
        def wrapper(self, *args, **kwargs):
            if str(self.rank) == rank:
                raise RuntimeError(f"injected failure ({FAIL_VARIABLE}={self.rank})")
            return method(self, *args, **kwargs)

        return wrapper

    Torchrun.gather_objects = failing(Torchrun.gather_objects)  # type: ignore[method-assign]
    Torchrun.all_reduce_sum = failing(Torchrun.all_reduce_sum)  # type: ignore[method-assign]


def install() -> None:
    if not _first_attempt():
        return
    after = int(os.environ.get(KILL_AFTER_VARIABLE, "0") or 0)
    if after and _this_rank(KILL_RANK_VARIABLE):
        install_kill_after(after)
    if os.environ.get(FAIL_VARIABLE, ""):
        install_failure(os.environ[FAIL_VARIABLE])


if __name__ == "__main__":
    install()
    from habactl.cli.main import main

    main()
