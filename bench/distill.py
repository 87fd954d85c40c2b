"""Distillation benchmarks: seconds per DM iteration, and a quick accuracy check.

    python bench/distill.py speed   # the issue-3 matrix (each case in its own process)
    python bench/distill.py speed --case 1x28x28:10:64:raw --iterations 10
    python bench/distill.py accuracy               # default compress vs random, ConvNet-3 accuracy

`speed` prints, per case, seconds per iteration (median after warm-up iterations) and
the peak RSS of the process that ran it, plus the machine. A case is
SHAPE:IPC:REAL_PER_CLASS:CODEC[:VIEWS]; 1x28x28 uses the embedded mnist-5k, other
shapes random images with 10 classes (the cost depends only on the shapes).

`accuracy` trains ConvNet-3 from scratch on archives (SGD lr 0.01, momentum 0.9, weight
decay 5e-4, batch 256, DSA augmentation, lr x 0.1 at half-time) and reports test
accuracy on mnist-5k's test split, normalised as each archive says.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

DEFAULT_CASES = [
    "1x28x28:1:64:raw",
    "1x28x28:10:64:raw",
    "1x28x28:10:64:haba",
    "1x28x28:1:256:raw",
    "1x28x28:10:256:raw",
    "1x28x28:10:256:haba",
    "1x28x28:1:64:haba+idc",
    "3x32x32:1:64:raw",
    "3x32x32:10:64:raw",
    "3x32x32:10:64:haba",
    "3x32x32:10:256:raw",
]


def machine() -> str:
    model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{model}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, python {platform.python_version()}"
    )


def fake_source(shape: tuple[int, int, int], per_class: int = 300, classes: int = 10):
    from habactl.data.base import LabeledImages, make_source

    generator = torch.Generator().manual_seed(0)
    n = per_class * classes
    images = torch.rand(n, *shape, generator=generator)
    labels = torch.arange(classes).repeat_interleave(per_class)
    test = LabeledImages(images[:classes], labels[:classes])
    return make_source(
        f"random-{'x'.join(map(str, shape))}",
        [str(k) for k in range(classes)],
        LabeledImages(images, labels),
        test,
        is_digits=False,
    )


def run_case(case: str, iterations: int, warmup: int) -> dict:
    from habactl.data import load_source
    from habactl.distill import DistillConfig, Distiller

    parts = case.split(":")
    shape = tuple(int(s) for s in parts[0].split("x"))
    ipc, real, codec = int(parts[1]), int(parts[2]), parts[3]
    views = int(parts[4]) if len(parts) > 4 else 1
    source = load_source("mnist-5k") if shape == (1, 28, 28) else fake_source(shape)
    config = DistillConfig(
        codec=codec,
        ipc=ipc,
        iterations=0,
        objective_settings={"real_per_class": real, "views": views},
    )
    distiller = Distiller(source, config)
    for _ in range(warmup):
        distiller.step()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        distiller.step()
        times.append(time.perf_counter() - start)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "case": case,
        "plan": distiller.plan.summary(),
        "contrastive": distiller.contrast is not None,
        "s_per_it": statistics.median(times),
        "min_s": min(times),
        "peak_rss_mib": peak_kib / 1024,
        "iterations": iterations,
    }


def speed(args: argparse.Namespace) -> None:
    print(f"machine: {machine()}")
    print(f"{'case':24} {'s/it':>7} {'min':>7} {'RSS MiB':>8}  plan")
    for case in args.case or DEFAULT_CASES:
        command = [
            sys.executable,
            __file__,
            "one",
            case,
            "--iterations",
            str(args.iterations),
            "--warmup",
            str(args.warmup),
            "--threads",
            str(args.threads),
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{case:24} failed: {done.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"{case:24} {r['s_per_it']:7.3f} {r['min_s']:7.3f} {r['peak_rss_mib']:8.0f}  "
            f"{r['plan']}{' +contrastive' if r['contrastive'] else ''}",
            flush=True,
        )


# -- accuracy ---------------------------------------------------------------------------


def train_and_test(archive: Path, *, epochs: int, seed: int, test_images, test_labels) -> float:
    """ConvNet-3 from scratch on the expanded archive; test accuracy (%) on real images."""
    import torch.nn.functional as F

    from habactl.augment import SiameseAugment
    from habactl.codecs import Pipeline
    from habactl.format import open_archive
    from habactl.nets import build_net
    from habactl.normalization import Normalizer

    with open_archive(archive) as a:
        manifest = a.manifest
        tensors = a.tensors()
    base_shape = tuple(manifest["bases"]["shape"])
    pipeline = Pipeline.from_manifest(manifest["pipeline"], base_shape)
    pipeline.load_tensors({k: v for k, v in tensors.items() if k.startswith("pipeline.")})
    with torch.no_grad():
        images = pipeline.decode_all(tensors["bases"])
    labels = tensors["labels"].repeat_interleave(pipeline.expansion)
    image = manifest["image"]
    torch.manual_seed(seed)
    net = build_net(
        "convnet", image["channels"], image["height"], image["width"], len(manifest["classes"])
    )
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    augment = SiameseAugment(flip=False)
    generator = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    for epoch in range(epochs):
        if epoch == epochs // 2:
            for group in optimizer.param_groups:
                group["lr"] *= 0.1
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, 256):
            index = order[start : start + 256]
            x = augment(images[index], generator, per_sample=True)
            loss = F.cross_entropy(net(x), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    normalise = Normalizer(manifest["normalization"])
    net.eval()
    with torch.no_grad():
        predictions = torch.cat(
            [net(normalise(chunk)).argmax(1) for chunk in test_images.split(250)]
        )
    return 100.0 * float((predictions == test_labels).float().mean())


def accuracy(args: argparse.Namespace) -> None:
    from habactl.data import load_source

    print(f"machine: {machine()}")
    source = load_source("mnist-5k")
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}
    archives = {}
    for name, extra in (
        ("random", ["--objective", "random"]),
        ("default", []),
        *[(f"arm{i}", a.split()) for i, a in enumerate(args.arm)],
    ):
        path = folder / f"{name}.haba"
        if not path.exists():
            start = time.perf_counter()
            code = "from habactl.cli.main import main; main()"
            done = subprocess.run(
                [sys.executable, "-c", code, "compress", "mnist-5k", "-o", str(path), "-q", *extra],
                env=env,
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise SystemExit(f"{name}: {done.stderr.strip()}")
            print(
                f"{name}: compress {' '.join(extra) or '(defaults)'}: "
                f"{time.perf_counter() - start:.0f} s",
                flush=True,
            )
        archives[name] = path
    for name, path in archives.items():
        scores = []
        for seed in range(args.models):
            start = time.perf_counter()
            scores.append(
                train_and_test(
                    path,
                    epochs=args.epochs,
                    seed=seed,
                    test_images=source.test.images,
                    test_labels=source.test.labels,
                )
            )
            print(
                f"  {name} model {seed}: {scores[-1]:.1f}% ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
        mean = statistics.mean(scores)
        spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
        print(
            f"{name}: {mean:.1f} ± {spread:.1f} % ({args.models} models, {args.epochs} epochs)",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--case", action="append", help="SHAPE:IPC:REAL:CODEC[:VIEWS] (repeatable)")
    s.add_argument("--iterations", type=int, default=5)
    s.add_argument("--warmup", type=int, default=2)
    s.add_argument("--threads", type=int, default=os.cpu_count())
    o = sub.add_parser("one")
    o.add_argument("case")
    o.add_argument("--iterations", type=int, default=5)
    o.add_argument("--warmup", type=int, default=2)
    o.add_argument("--threads", type=int, default=os.cpu_count())
    a = sub.add_parser("accuracy")
    a.add_argument("--folder", default="bench-out/distill")
    a.add_argument("--epochs", type=int, default=300)
    a.add_argument("--models", type=int, default=3)
    a.add_argument("--threads", type=int, default=os.cpu_count())
    a.add_argument("--arm", action="append", default=[], help="extra compress options to compare")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.mode == "speed":
        speed(args)
    elif args.mode == "one":
        print(json.dumps(run_case(args.case, args.iterations, args.warmup)))
    else:
        accuracy(args)


if __name__ == "__main__":
    main()
