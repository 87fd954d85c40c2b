"""Loader throughput: expanded images per second, batched vs per-item vs TensorDataset.

    .venv/bin/python bench/loader.py [--bases-per-class 100] [--repeats 3] [--json out.json]

For 1×28×28 and 3×32×32 with 5 hallucinators of each architecture it times
- batched expansion: `HabaDataset.fetch` on batches of 256 (decode only);
- per-item: `dataset[i]` one at a time;
- one shuffled DataLoader epoch (batch 256) over HabaDataset vs over a plain
  TensorDataset of the same, already expanded, images (num_workers 0 and 2).
Each comparison is measured side by side in the same run; ratios are what to quote.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.utils.data import DataLoader, TensorDataset

from habactl.codecs import Pipeline
from habactl.distill.archive import write_haba
from habactl.format.normalization import mean_std
from habactl.training.dataset import HabaDataset

BATCH = 256


def make_archive(folder: Path, shape: tuple[int, int, int], arch: str, per_class: int) -> Path:
    channels, height, width = shape
    classes = [str(c) for c in range(10)]
    generator = torch.Generator().manual_seed(0)
    bases = torch.randn(10 * per_class, *shape, generator=generator)
    labels = torch.arange(10).repeat_interleave(per_class)
    pipeline = Pipeline.from_manifest(
        [
            {
                "name": "hallucinate",
                "version": 1,
                "configuration": {"arch": arch, "count": 5, "hidden": 3, "kernel": 3},
            }
        ],
        shape,
    )
    with torch.no_grad():
        for tensor in pipeline.parameters():
            tensor.add_(0.01 * torch.randn(tensor.shape, generator=generator))
    source = SimpleNamespace(
        name="bench",
        fingerprint="sha256:" + "0" * 64,
        classes=classes,
        channels=channels,
        height=height,
        width=width,
    )
    path = folder / f"{arch}-{channels}x{height}x{width}.haba"
    return write_haba(
        path,
        source=source,
        bases=bases,
        labels=labels,
        pipeline=pipeline,
        normalization=mean_std([0.0] * channels, [1.0] * channels),
        objective="random",
        hyperparameters={},
        iterations=0,
        seed=0,
        ipc=per_class,
        overwrite=True,
    )


def best_of(repeats: int, run) -> float:
    """Seconds of the fastest of `repeats` runs (the least disturbed by a shared machine)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def epoch(loader: DataLoader) -> None:
    for images, _labels in loader:
        images.sum()


def measure(path: Path, repeats: int) -> dict[str, float]:
    dataset = HabaDataset(path, cache=False)  # decode on the fly: what the first 3 columns time
    n = len(dataset)
    dataset.fetch(torch.arange(min(n, BATCH)))  # open and decode once outside the timings
    batches = torch.arange(n).split(BATCH)

    def batched() -> None:
        for batch in batches:
            dataset.fetch(batch)

    items = min(n, 2000)

    def per_item() -> None:
        for i in range(items):
            dataset[i]

    images, labels = dataset.tensors()
    plain = TensorDataset(images, labels)
    result = {
        "items": n,
        "batched_img_per_s": n / best_of(repeats, batched),
        "per_item_img_per_s": items / best_of(repeats, per_item),
    }
    cached = HabaDataset(path)  # the default: decoded once per process, then indexed
    for workers in (0, 2):
        kwargs = dict(
            batch_size=BATCH, shuffle=True, num_workers=workers, persistent_workers=workers > 0
        )
        loaders = {
            "fly": DataLoader(dataset, **kwargs),
            "cached": DataLoader(cached, **kwargs),
            "tensor": DataLoader(plain, **kwargs),
        }
        for loader in loaders.values():
            epoch(loader)  # start workers, warm caches
        # Interleave the three so that a burst of load on a shared machine hits all alike.
        times = {name: [] for name in loaders}
        for _ in range(repeats):
            for name, loader in loaders.items():
                times[name].append(best_of(1, functools.partial(epoch, loader)))
        for name in loaders:
            result[f"epoch_s_{name}_w{workers}"] = min(times[name])
        for name in ("fly", "cached"):
            result[f"epoch_ratio_{name}_w{workers}"] = (
                result[f"epoch_s_{name}_w{workers}"] / result[f"epoch_s_tensor_w{workers}"]
            )
    return result


def machine() -> str:
    return (
        f"{platform.machine()} {platform.processor() or ''} · {os.cpu_count()} CPUs · "
        f"torch {torch.__version__} · {torch.get_num_threads()} threads · "
        f"Python {platform.python_version()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases-per-class", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(
        f"{args.bases_per_class * 10} bases × 5 hallucinators; batch {BATCH}; "
        f"best of {args.repeats}"
    )
    header = (
        f"{'shape':<9} {'arch':<15} {'items':>6} {'batched img/s':>14} {'per-item img/s':>15}"
        f"   epoch / TensorDataset epoch: on-the-fly w0, cached w0, on-the-fly w2, cached w2"
    )
    print(header)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for shape in ((1, 28, 28), (3, 32, 32)):
            for arch in ("channel-affine", "pixel-affine"):
                path = make_archive(Path(folder), shape, arch, args.bases_per_class)
                r = measure(path, args.repeats)
                rows.append({"shape": list(shape), "arch": arch, **r})
                print(
                    f"{'x'.join(map(str, shape)):<9} {arch:<15} {r['items']:>6} "
                    f"{r['batched_img_per_s']:>14,.0f} {r['per_item_img_per_s']:>15,.0f}   "
                    + "  ".join(
                        f"{r[f'epoch_ratio_{k}_w{w}']:.2f}× "
                        f"({r[f'epoch_s_{k}_w{w}']:.3f}/{r[f'epoch_s_tensor_w{w}']:.3f} s)"
                        for w in (0, 2)
                        for k in ("fly", "cached")
                    )
                )
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
