"""Progress for people (a line on stderr) and for machines (a JSONL metrics log).

`ProgressLine` is the one progress display of the command line (compress, evaluate,
experts). On a terminal it is one live line that fits the terminal's width: the fields
that do not fit are dropped in a fixed order (the bar first, the ETA and the count
last), so that 80 columns keep the elapsed time and the ETA and 50 columns stay
readable. When stderr is a file or a pipe it prints a plain line every few percent
instead, so that a log shows how far a run got.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

# A plain (non-terminal) progress line at least every STEP_PERCENT percent of the work,
# and at least every QUIET_SECONDS seconds while it moves slower than that.
STEP_PERCENT = 5
QUIET_SECONDS = 60.0
_MIN_BAR, _MAX_BAR = 8, 40


def duration(seconds: float | None) -> str:
    """H:MM:SS, or -:--:-- when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "-:--:--"
    whole = int(seconds + 0.5)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def fit_line(
    width: int,
    *,
    description: str,
    completed: float,
    total: float | None,
    unit: str,
    elapsed: float | None,
    remaining: float | None,
    fields: Sequence[str] = (),
) -> tuple[str, int, str]:
    """(left text, bar width, right text) of one progress line at most `width` - 1 wide.

    `fields` are shown as given ("loss 0.12"). What does not fit is dropped in this
    order: the bar, the description, the fields (the last first), the elapsed time;
    the count and the ETA stay.
    """
    room = max(1, width - 1)  # not the last column: some terminals wrap there
    count = f"{int(completed):,}/{int(total):,} {unit}" if total else f"{int(completed):,} {unit}"
    if total:
        count += f" {min(100, int(100 * completed / total)):>3d}%"
    eta = f"ETA {duration(remaining)}" if total else ""
    extra = [f for f in fields if f]
    states = [(True, len(extra), True)] + [(False, n, True) for n in range(len(extra), -1, -1)]
    states.append((False, 0, False))
    for with_description, n, with_elapsed in states:
        if with_description and not description:
            continue
        right = "  ".join(
            p for p in [count, *extra[:n], duration(elapsed) if with_elapsed else "", eta] if p
        )
        left = description if with_description else ""
        used = len(left) + (2 if left else 0) + len(right)
        if used <= room:
            # The bar only while nothing else had to go: it is the first thing dropped.
            full = n == len(extra) and with_elapsed
            bar = min(_MAX_BAR, room - used - 2) if total and full else 0
            return left, (bar if bar >= _MIN_BAR else 0), right
    compact = (
        f"{int(completed)}/{int(total)} {int(100 * completed / total)}% {eta}" if total else count
    )
    return "", 0, compact[:room]


class ProgressLine:
    """One progress display on `console` (rich; stderr by default).

    ``start(total, completed, description)``, then ``update(...)`` as work is done,
    ``message(text)`` for a line above it, ``stop()`` at the end (or use ``with``).
    `total` may change on the way (evaluate adds networks as they report).
    """

    def __init__(
        self,
        console: Any = None,
        *,
        unit: str = "it",
        transient: bool = False,
        step_percent: float = STEP_PERCENT,
    ) -> None:
        from rich.console import Console

        self.console = console or Console(stderr=True, highlight=False)
        self.unit = unit
        self.transient = transient
        self.step = step_percent
        self.live = self.console.is_terminal
        self.description = ""
        self.total: float | None = None
        self.completed = 0.0
        self.fields: dict[str, str] = {}  # name -> shown text ("loss 0.12")
        self._progress: Any = None
        self._task: Any = None
        self._started = 0.0
        self._start_done = 0.0
        self._next_percent = 0.0
        self._last_line = 0.0
        self._printed: float | None = None  # `completed` of the last plain line

    # -- the work ---------------------------------------------------------------------
    def start(self, total: float | None, completed: float = 0, description: str = "") -> None:
        self.total, self.completed, self.description = total, completed, description
        self._started = self._last_line = time.perf_counter()
        self._start_done = completed
        if self.live:
            from rich.progress import Progress

            self._progress = Progress(
                _fitted_column(self), console=self.console, transient=self.transient
            )
            self._progress.start()
            self._task = self._progress.add_task(description, total=total, completed=completed)
        else:
            # No line yet: a run refused right away keeps its error the only line.
            self._next_percent = self._percent() + self.step

    def update(
        self,
        completed: float | None = None,
        *,
        total: float | None = None,
        description: str | None = None,
        **fields: str,
    ) -> None:
        """New values; each keyword is a field shown as given (``loss="loss 0.12"``)."""
        if completed is not None:
            self.completed = completed
        if total is not None:
            self.total = total
        if description is not None:
            self.description = description
        self.fields.update(fields)
        if self._progress is not None:
            self._progress.update(
                self._task, completed=self.completed, total=self.total, description=self.description
            )
        elif not self.live and self._started:
            self._plain()

    def message(self, text: str) -> None:
        """A line above the progress (word-wrapped on a terminal, never mid-word)."""
        if self.live:
            self.console.print(text, soft_wrap=False, overflow="fold")
        else:
            self.console.print(text, soft_wrap=True)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        elif (
            not self.live
            and self._started
            and self.completed > self._start_done
            and self._printed != self.completed
        ):
            self._plain(force=True)

    def __enter__(self) -> ProgressLine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- timing -----------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.perf_counter() - self._started if self._started else 0.0

    def remaining(self) -> float | None:
        done = self.completed - self._start_done
        if not self.total or done <= 0:
            return None
        return max(0.0, (self.total - self.completed) * self.elapsed() / done)

    def rate(self) -> float | None:
        done, seconds = self.completed - self._start_done, self.elapsed()
        return done / seconds if done > 0 and seconds > 0 else None

    def line(self, width: int) -> tuple[str, int, str]:
        return fit_line(
            width,
            description=self.description,
            completed=self.completed,
            total=self.total,
            unit=self.unit,
            elapsed=self.elapsed(),
            remaining=self.remaining(),
            fields=list(self.fields.values()),
        )

    # -- plain lines (stderr is not a terminal) ---------------------------------------
    def _percent(self) -> float:
        return 100.0 * self.completed / self.total if self.total else 0.0

    def _plain(self, force: bool = False) -> None:
        now = time.perf_counter()
        moved = self.completed > self._start_done
        due = self._percent() >= self._next_percent or now - self._last_line >= QUIET_SECONDS
        if not (force or (moved and due)):
            return
        left, _, right = self.line(10_000)
        print(f"{left}  {right}" if left else right, file=self.console.file, flush=True)
        self._last_line, self._printed = now, self.completed
        while self._next_percent <= self._percent():
            self._next_percent += self.step


def _fitted_column_class() -> type:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class FittedColumn(ProgressColumn):
        """The whole line as one column, laid out again for the width at every refresh."""

        def __init__(self, line: ProgressLine) -> None:
            super().__init__()
            self.owner = line

        def render(self, task: Any) -> Text:
            left, bar, right = self.owner.line(self.owner.console.width)
            text = Text(no_wrap=True, overflow="ellipsis")
            if left:
                text.append(left, style="bold")
                text.append("  ")
            if bar:
                total = self.owner.total or 1
                filled = int(round(bar * min(1.0, self.owner.completed / total)))
                text.append("━" * filled, style="magenta")
                text.append("━" * (bar - filled), style="grey23")
                text.append("  ")
            text.append(right)
            return text

    return FittedColumn


def _fitted_column(line: ProgressLine) -> Any:
    # rich is imported only when a live line starts (the class needs its base class).
    return _fitted_column_class()(line)


class Reporter:
    """Receives the run's events; the base class ignores them (``--quiet``)."""

    def start(self, total: int, done: int, description: str) -> None:
        pass

    def update(self, iteration: int, metrics: Mapping[str, float]) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class RichReporter(Reporter):
    """The distillation's progress on stderr: iteration, loss, iterations/s, elapsed, ETA
    (a live line on a terminal, a plain line every few percent otherwise)."""

    def __init__(self, console: Any = None, header: list[str] | None = None) -> None:
        from rich.console import Console

        self.console = console or Console(stderr=True, highlight=False)
        self.header = list(header or [])
        self.progress: ProgressLine | None = None

    def start(self, total: int, done: int, description: str) -> None:
        self.progress = ProgressLine(self.console, unit="it")
        # The header waits until the run really starts, so that a refusal stays one line.
        for line in self.header:
            self.progress.message(line)
        self.progress.start(total, done, description)

    def update(self, iteration: int, metrics: Mapping[str, float]) -> None:
        if self.progress is None:
            return
        rate = self.progress.rate()
        self.progress.update(
            iteration,
            loss=f"loss {metrics.get('loss', math.nan):.4g}",
            speed="" if rate is None else f"{rate:.2f} it/s",
        )

    def message(self, text: str) -> None:
        if self.progress is not None:
            self.progress.message(text)
        else:
            self.console.print(text)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class MetricsLog:
    """One JSON object per line: run start/resume, every iteration, the end."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.stream: TextIO | None = None
        self.started = time.perf_counter()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.stream = open(path, "a", encoding="utf-8")

    def write(self, record: Mapping[str, Any]) -> None:
        if self.stream is None:
            return
        entry = {**record, "elapsed_s": round(time.perf_counter() - self.started, 4)}
        self.stream.write(json.dumps(entry, sort_keys=True, allow_nan=True) + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None


__all__ = ["ProgressLine", "Reporter", "RichReporter", "MetricsLog", "fit_line", "duration"]
