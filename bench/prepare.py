"""habactl prepare's throughput and peak memory on generated data.

    .venv/bin/python bench/prepare.py [--work /tmp/prepare-bench] [--per-class 200]
        [--npz-per-class 500] [--workers 0 2]

Makes (once) an ImageFolder of 64x64 JPEGs (10 classes x --per-class) and a
Tiny-ImageNet-shaped .npz (200 classes x --npz-per-class train and 50 test images,
3x64x64 uint8, stored uncompressed), then runs `habactl prepare` on each in a fresh
process and prints images per second and the process's peak resident memory. Random
pixels: the numbers measure decoding and writing, not a particular data set.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def jpeg_folder(folder: Path, per_class: int) -> Path:
    from PIL import Image

    if folder.is_dir():
        return folder
    rng = np.random.default_rng(0)
    for cls in range(10):
        (folder / f"c{cls}").mkdir(parents=True)
        for i in range(per_class):
            # Smooth content (an upsampled 8x8 image) compresses as photographs do.
            base = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
            base.resize((64, 64), Image.Resampling.BILINEAR).save(
                folder / f"c{cls}" / f"{i:04d}.jpg", quality=90
            )
    return folder


def tiny_npz(path: Path, per_class: int) -> Path:
    if path.is_file():
        return path
    rng = np.random.default_rng(0)
    train = np.empty((200 * per_class, 64, 64, 3), dtype=np.uint8)
    for start in range(0, len(train), 10_000):
        part = train[start : start + 10_000]
        part[...] = rng.integers(0, 256, part.shape, dtype=np.uint8)
    test = rng.integers(0, 256, (200 * 50, 64, 64, 3), dtype=np.uint8)
    np.savez(
        path,
        x_train=train,
        y_train=np.repeat(np.arange(200), per_class),
        x_test=test,
        y_test=np.repeat(np.arange(200), 50),
    )
    return path


def prepare(source: Path, store: Path, *flags: str) -> tuple[float, float]:
    """(seconds, peak resident MiB) of one `habactl prepare` process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "habactl", "prepare", str(source), "-o", str(store)]
    began = time.perf_counter()
    process = subprocess.Popen(
        [*command, "-q", "--force", *flags], env=env, stderr=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(process.pid, 0)  # this child's own peak, not the largest yet
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - began
    if process.returncode:
        raise SystemExit(f"habactl prepare {source} failed ({process.returncode})")
    return seconds, usage.ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/prepare-bench"))
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--npz-per-class", type=int, default=500)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, os.cpu_count() or 1])
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    folder = args.work / f"jpegs-{args.per_class}"
    npz = args.work / f"tiny-{args.npz_per_class}.npz"
    if args.generate:
        jpeg_folder(folder, args.per_class)
        tiny_npz(npz, args.npz_per_class)
        return
    # Generated in another process: Linux carries a parent's peak memory into the
    # children it starts, which would inflate the peaks measured below.
    subprocess.run([sys.executable, __file__, "--generate", *sys.argv[1:]], check=True)
    print(f"{os.cpu_count()} cores; prepare's total time, start-up included")
    images = 10 * args.per_class
    for workers in args.workers:
        seconds, peak = prepare(folder, args.work / "jpegs.store", "--workers", str(workers))
        print(
            f"JPEG folder, {images:,} images, --workers {workers}: {images / seconds:,.0f} img/s "
            f"({seconds:.1f} s), peak RSS {peak:,.0f} MiB"
        )
    images = 200 * (args.npz_per_class + 50)
    size = npz.stat().st_size / 2**30
    seconds, peak = prepare(npz, args.work / "npz.store")
    print(
        f".npz, {images:,} images ({size:.2f} GiB): {images / seconds:,.0f} img/s "
        f"({seconds:.1f} s), peak RSS {peak:,.0f} MiB"
    )


if __name__ == "__main__":
    main()
