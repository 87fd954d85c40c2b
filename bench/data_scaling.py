"""Memory and speed of `habactl compress` on data of any size: peak RSS, seconds to the
first iteration, seconds per iteration.

    python bench/data_scaling.py make tiny.store --classes 200 --train 500 --test 50
    python bench/data_scaling.py make small.npz --classes 200 --train 50 --test 10
    python bench/data_scaling.py run tiny.store --codec raw --iterations 5
    python bench/data_scaling.py run small.npz --codec haba+idc --iterations 5
    python bench/data_scaling.py run tiny.store --classes-per-iteration 50   # any compress option

`make` writes random uint8 images (3x64x64 by default) as a store or as an .npz (the
same pixels for the same seed and sizes), so that a Tiny-ImageNet-shaped set needs no
download.

`run` starts `habactl compress DATA --objective dm --ipc 1` as a child process with a
metrics log and prints one Markdown row: the peak resident memory of the child
(ru_maxrss, what `/usr/bin/time -v` reports as "Maximum resident set size"; Linux
carries a process's maximum over exec, so the parent imports nothing heavy: a few MiB
of it are counted), the wall seconds from the start of the process to the start of its
loop (the log's start line: loading, planning, initial bases) and to the end of its
first iteration (the log's first iteration line; both polled), the median seconds per
iteration after the first (from the log's `elapsed_s`), and the whole run's seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make(args: argparse.Namespace) -> None:
    import numpy as np

    from habactl.store import write_store

    rng = np.random.default_rng(args.seed)
    shape = (3, args.size, args.size)

    def split(per: int):
        images = rng.integers(0, 256, size=(args.classes * per, *shape), dtype=np.uint8)
        return images, np.repeat(np.arange(args.classes), per)

    train, test = split(args.train), split(args.test)
    names = [f"n{i:08d}" for i in range(args.classes)]
    if args.output.endswith(".npz"):
        np.savez(args.output, x_train=train[0], y_train=train[1], x_test=test[0],
                 y_test=test[1], classes=np.array(names))  # fmt: skip
    else:
        write_store(args.output, name=Path(args.output).stem, classes=names, train=train,
                    test=test, force=True)  # fmt: skip
    print(f"wrote {args.output}: {args.classes} classes x {args.train} train, {args.test} test")


def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "run.jsonl"
        command = [
            sys.executable, "-m", "habactl", "compress", args.data, "--objective", "dm",
            "--codec", args.codec, "--ipc", "1", "--iterations", str(args.iterations),
            "--threads", str(args.threads), "-q", "--force",
            "-o", str(Path(folder) / "out.haba"), "--log-file", str(log), *args.extra,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        started = time.perf_counter()
        child = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
        loop = first = None
        while child.poll() is None:
            text = log.read_text() if log.exists() else ""
            if loop is None and '"event": "start"' in text:
                loop = time.perf_counter() - started
            if first is None and '"event": "iteration"' in text:
                first = time.perf_counter() - started
            time.sleep(0.05)
        wall = time.perf_counter() - started
        error = child.stderr.read() if child.stderr else ""
        if child.returncode != 0:
            raise SystemExit(f"compress failed ({child.returncode}): {error.strip()}")
        records = [json.loads(line) for line in log.read_text().splitlines()]
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    times = [r["elapsed_s"] for r in records if r["event"] == "iteration"]
    per_iteration = statistics.median(b - a for a, b in zip(times, times[1:]))
    nan = float("nan")
    print(
        f"| {Path(args.data).name} | {args.codec} | {peak / 2**30:.2f} GiB | "
        f"{nan if loop is None else loop:.1f} s | {nan if first is None else first:.1f} s | "
        f"{per_iteration:.2f} s/it | {wall:.0f} s |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    maker = commands.add_parser("make", help="random uint8 images as a store or an .npz")
    maker.add_argument("output")
    maker.add_argument("--classes", type=int, default=200)
    maker.add_argument("--train", type=int, default=500, help="train images per class")
    maker.add_argument("--test", type=int, default=50, help="test images per class")
    maker.add_argument("--size", type=int, default=64)
    maker.add_argument("--seed", type=int, default=0)
    runner = commands.add_parser("run", help="time one compress in a child process")
    runner.add_argument("data")
    runner.add_argument("--codec", default="raw")
    runner.add_argument("--iterations", type=int, default=5)
    runner.add_argument("--threads", type=int, default=0)
    args, extra = parser.parse_known_args()  # the rest: more compress options
    args.extra = [a for a in extra if a != "--"]
    make(args) if args.command == "make" else run(args)


if __name__ == "__main__":
    main()
