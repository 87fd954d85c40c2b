"""A user's own training loop with the archive's recipe vs `habactl evaluate`'s training.

    .venv/bin/python bench/own_loop.py --archive mnist-5k.haba [--zca-per-class 10]
        [--epochs 150] [--seeds 0] [--nets small,resnet18] [--resnet-width 0.25]
        [--jobs 2] [--json out.json]

Rows: every archive (the one given and, with --zca-per-class N, a ZCA archive of N random
real mnist-5k images per class built here with library code) x every network x every
seed. Each row trains the same network twice from the same seed, for the same epochs:

- own loop: `examples/train_own_loop.py`'s `train_and_test`, i.e. a shuffled DataLoader
  over `HabaDataset`, `recipe.augmentation`, `recipe.loss`, `recipe.optimizer`,
  `recipe.scheduler`, and real test images through `train.test_transform()`;
- evaluate: what `habactl evaluate` runs for each model (evaluation.parallel's
  train_and_score): `evaluation.train.train_net` with the archive's protocol and DSA,
  then `evaluation.score.accuracy` on the test split from `prepare_test_images`.

Networks are ones habactl did not distil with: `small` (the example's CNN) and the zoo's
`resnet18` (at --resnet-width, because a full-width ResNet-18 takes minutes per epoch on
a busy CPU). Every training runs with one torch thread; --jobs trains that many at once.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
# points: how close the own loop should land to evaluate (one network per side, so about
# a point of seed noise on each)
TOLERANCE = 1.5


def example() -> Any:
    """examples/train_own_loop.py as a module (it is a script, not part of the package)."""
    path = ROOT / "examples" / "train_own_loop.py"
    spec = importlib.util.spec_from_file_location("train_own_loop", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def net_factory(name: str, resnet_width: float) -> Callable[..., torch.nn.Module]:
    from habactl.nets import build_net

    if name == "small":
        return example().small_cnn
    if name == "resnet18":
        return partial(build_net, "resnet18", width_mult=resnet_width)
    return partial(build_net, name)


def make_zca_archive(path: Path, per_class: int, seed: int = 0) -> Path:
    """`per_class` random real mnist-5k training images per class, ZCA-whitened (eps 0.1,
    fitted on the whole training split), as a raw archive."""
    from habactl.codecs import Pipeline
    from habactl.data import load_source
    from habactl.distill.archive import write_haba
    from habactl.distill.baselines import random_per_class
    from habactl.format.normalization import Normalizer
    from habactl.interop.zca import fit_zca

    source = load_source("mnist-5k")
    fit = fit_zca(source.train.images)
    normalization = {
        "kind": "zca",
        "mean": fit.channel_mean,
        "std": [1.0] * source.channels,
        "eps": fit.eps,
    }
    picked = random_per_class(source.train.labels, per_class, source.num_classes, seed)
    bases = Normalizer(normalization, fit.matrix)(source.train.images[picked])
    return write_haba(
        path,
        source=source,
        bases=bases,
        labels=source.train.labels[picked],
        pipeline=Pipeline.from_manifest([], tuple(bases.shape[1:])),
        normalization=normalization,
        objective="random",
        hyperparameters={"per_class": per_class, "zca": "fitted on the train split"},
        iterations=0,
        seed=seed,
        ipc=per_class,
        zca=fit.matrix,
        overwrite=True,
    )


def own_loop(archive: str, net: str, epochs: int, seed: int, resnet_width: float) -> float:
    return example().train_and_test(archive, net_factory(net, resnet_width), epochs, seed)


def evaluate_side(archive: str, net: str, epochs: int, seed: int, resnet_width: float) -> float:
    """One model of `habactl evaluate` (train_and_score), with a network of our choosing."""
    from habactl.data import load_source
    from habactl.evaluation.run import prepare_test_images
    from habactl.evaluation.score import accuracy
    from habactl.evaluation.train import make_augment, train_net
    from habactl.training.dataset import HabaDataset

    dataset = HabaDataset(archive)
    recipe = dataset.recipe
    source = load_source(recipe.dataset)
    protocol = recipe.protocol(epochs=epochs, models=1, seed=seed)
    test_images, test_labels = prepare_test_images(dataset, source)
    images, labels = dataset.tensors()
    device = "cuda" if torch.cuda.is_available() else "cpu"  # as the example picks it
    torch.manual_seed(seed)
    model = net_factory(net, resnet_width)(*dataset.image_shape, dataset.num_classes).to(device)
    train_net(
        model,
        images.float().to(device),
        labels.to(device),
        protocol,
        lr=recipe.lr,
        augment=make_augment(protocol, flip=not source.is_digits),
        generator=torch.Generator().manual_seed(seed),
    )
    return 100.0 * accuracy(model, test_images, test_labels, batch_size=protocol.test_batch_size)


def run_one(side: str, archive: str, net: str, epochs: int, seed: int, width: float) -> dict:
    torch.set_num_threads(1)
    started = time.perf_counter()
    train = own_loop if side == "own" else evaluate_side
    value = train(archive, net, epochs, seed, width)
    return {
        "side": side,
        "archive": archive,
        "net": net,
        "seed": seed,
        "accuracy": round(value, 2),
        "seconds": round(time.perf_counter() - started, 1),
    }


def machine() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (
        f"{platform.processor() or platform.machine()}, {cores} cores (load average {load} "
        f"at the start), torch {torch.__version__}, 1 thread per training, no GPU"
        if not torch.cuda.is_available()
        else f"{torch.cuda.get_device_name()}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", action="append", default=[], help="archive(s) to train on")
    parser.add_argument(
        "--zca-per-class",
        type=int,
        default=0,
        help="also build and train on a ZCA archive of N real images per class",
    )
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--nets", default="small,resnet18")
    parser.add_argument("--resnet-width", type=float, default=0.25)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    archives = list(args.archive)
    folder = Path(tempfile.mkdtemp(prefix="own-loop-"))
    if args.zca_per_class:
        archives.append(
            str(
                make_zca_archive(
                    folder / f"mnist-5k-zca-{args.zca_per_class}.haba", args.zca_per_class
                )
            )
        )
    if not archives:
        parser.error("give --archive and/or --zca-per-class")
    seeds = [int(s) for s in args.seeds.split(",")]
    nets = [n.strip() for n in args.nets.split(",") if n.strip()]
    header = machine()
    jobs = [
        (side, a, n, args.epochs, s, args.resnet_width)
        for a in archives
        for n in nets
        for s in seeds
        for side in ("own", "evaluate")
    ]
    started = time.perf_counter()
    context = torch.multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
        results = list(pool.map(run_one, *zip(*jobs)))

    rows = []
    for a in archives:
        for n in nets:
            for s in seeds:
                own, ev = (
                    next(
                        r
                        for r in results
                        if (r["side"], r["archive"], r["net"], r["seed"]) == (side, a, n, s)
                    )
                    for side in ("own", "evaluate")
                )
                gap = own["accuracy"] - ev["accuracy"]
                rows.append(
                    {
                        "archive": Path(a).name,
                        "net": n,
                        "seed": s,
                        "own_loop": own["accuracy"],
                        "evaluate": ev["accuracy"],
                        "gap": round(gap, 2),
                        "within_tolerance": abs(gap) <= TOLERANCE,
                        "seconds": [own["seconds"], ev["seconds"]],
                    }
                )
    net_note = f"resnet18 at width {args.resnet_width:g}" if "resnet18" in nets else ""
    print(f"machine: {header}")
    print(
        f"{args.epochs} epochs, seeds {args.seeds}, {net_note}; "
        f"{time.perf_counter() - started:.0f} s in all"
    )
    print("| archive | network | seed | own loop % | evaluate % | own − evaluate |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['archive']} | {r['net']} | {r['seed']} | {r['own_loop']:.2f} | "
            f"{r['evaluate']:.2f} | {r['gap']:+.2f} |"
        )
    ok = all(r["within_tolerance"] for r in rows)
    print(f"every row within {TOLERANCE} points: {'yes' if ok else 'NO'}")
    if args.json:
        summary = {
            "machine": header,
            "epochs": args.epochs,
            "seeds": seeds,
            "resnet_width": args.resnet_width,
            "rows": rows,
        }
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
