"""Progress for people (a rich bar on stderr) and for machines (a JSONL metrics log)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Mapping, TextIO


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
    """A progress bar on stderr: iteration, loss, iterations/s and ETA."""

    def __init__(self, console: Any = None, header: list[str] | None = None) -> None:
        from rich.console import Console

        self.console = console or Console(stderr=True, highlight=False)
        self.header = list(header or [])
        self.progress: Any = None
        self.task: Any = None

    def start(self, total: int, done: int, description: str) -> None:
        # The header waits until the run really starts, so that a refusal stays one line.
        for line in self.header:
            self.console.print(line)
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[rate]} it/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(description, total=total, completed=done,
                                           loss="-", rate="-")

    def update(self, iteration: int, metrics: Mapping[str, float]) -> None:
        if self.progress is None:
            return
        task = self.progress.tasks[0]
        speed = task.speed
        self.progress.update(self.task, completed=iteration, loss=f"{metrics.get('loss', math.nan):.4g}",
                             rate="-" if not speed else f"{speed:.2f}")

    def message(self, text: str) -> None:
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
