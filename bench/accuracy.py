"""Accuracy versus TRUE storage budget on mnist-5k, for every codec (issue 4 §2).

    .venv/bin/python bench/accuracy.py [--ipc 1 10] [--iterations 300] [--epochs 300]
        [--models 3] [--jobs 2] [--arms random,dm-raw,...] [--out bench/results/accuracy.json]

Every arm is distilled with the same DM settings and seed, then scored with the same
evaluation protocol (ConvNet-3, final-epoch test accuracy on mnist-5k's 1,000 test
images, mean ± std over --models). Arms run in --jobs single-threaded processes (on a
2-core CPU two one-thread jobs beat one two-thread job for these small batches).
Results are appended to the JSON as they finish, so an interrupted run resumes; the
plot (accuracy vs stored values) is written next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# name -> (objective, DistillConfig overrides, label)
ARMS: dict[str, tuple[str, dict[str, Any], str]] = {
    "random": ("random", {}, "random real images"),
    "dm-raw": ("dm", {"codec": "raw"}, "DM, raw images"),
    "dm-idc": ("dm", {"codec": "idc", "factor": 2}, "DM, IDC (factor 2)"),
    "dm-haba-channel": ("dm", {"codec": "haba", "hallucinator_arch": "channel-affine"},
                        "DM, HaBa channel-affine"),
    "dm-haba-pixel": ("dm", {"codec": "haba", "hallucinator_arch": "pixel-affine"},
                      "DM, HaBa pixel-affine"),
    "dm-haba-idc": ("dm", {"codec": "haba+idc", "factor": 2}, "DM, HaBa + IDC"),
    "dm-haba-idc-refcount": ("dm", {"codec": "haba+idc", "factor": 2, "counts": "bases"},
                             "DM, HaBa + IDC, reference counting (stores MORE than its budget)"),
    # Ablations of the HaBa + IDC arm (IPC 1 only by default).
    "ablate-k1": ("dm", {"codec": "haba+idc", "factor": 2, "hallucinators": 1},
                  "ablation: HaBa + IDC with K = 1"),
    "ablate-no-contrastive": ("dm", {"codec": "haba+idc", "factor": 2, "contrastive": False},
                              "ablation: HaBa + IDC, contrastive term off"),
    "ablate-identity": ("identity", {"codec": "haba+idc", "factor": 2},
                        "ablation: the HaBa + IDC bases with identity hallucinators"),
}
DEFAULT_IPC1 = list(ARMS)
DEFAULT_IPC10 = ["random", "dm-raw", "dm-idc", "dm-haba-channel", "dm-haba-idc"]


def machine() -> str:
    import torch

    return (f"{platform.machine()} · {os.cpu_count()} CPUs · torch {torch.__version__} · "
            f"Python {platform.python_version()}")


def distill_settings() -> dict[str, Any]:
    """The DM settings every distilled arm shares (engine and objective defaults)."""
    import dataclasses

    from habactl.distill.engine import DistillConfig
    from habactl.distill.objectives.dm import DistributionMatching

    shared = {f.name: f.default for f in dataclasses.fields(DistillConfig)
              if f.name in ("lr_bases", "lr_hallucinators", "momentum", "init", "hallucinators",
                            "hallucinator_arch", "augment", "leftover")}
    return {**shared, **DistributionMatching.defaults}


def run_arm(name: str, ipc: int, args: dict[str, Any], folder: str) -> dict[str, Any]:
    """Distil (or select) one arm and evaluate it; runs in a worker process."""
    import torch

    torch.set_num_threads(1)
    from habactl.data import load_source
    from habactl.distill.engine import DistillConfig, distill
    from habactl.evaluation.protocol import Protocol
    from habactl.evaluation.run import evaluate_archive
    from habactl.format import open_archive, storage_account

    objective, overrides, label = ARMS[name]
    source = load_source("mnist-5k")
    path = Path(folder) / f"{name}-ipc{ipc}.haba"
    started = time.perf_counter()
    if objective == "random":
        make_random(source, ipc, path)
    else:
        based_on = "dm-haba-idc" if objective == "identity" else name
        base_path = Path(folder) / f"{based_on}-ipc{ipc}.haba"
        if objective == "identity" and base_path.exists():
            pass
        else:
            config = DistillConfig(objective="dm", ipc=ipc, iterations=args["iterations"],
                                   seed=args["seed"], device="cpu", checkpoint_every=10**9,
                                   **overrides)
            distill(source, config, base_path, force=True)
        if objective == "identity":
            identity_copy(source, base_path, path)
    distill_seconds = time.perf_counter() - started
    protocol = Protocol(epochs=args["epochs"], models=args["models"], seed=args["seed"])
    result = evaluate_archive(path, protocol=protocol, archs=("convnet",), threads=1)
    with open_archive(path) as archive:
        account = storage_account(archive.manifest)
        expanded = archive.plan.expanded_items
    score = result["results"]["convnet"]
    return {"arm": name, "ipc": ipc, "label": label, "stored_values": account["stored_values"],
            "budget_values": account["budget_values"], "ratio": round(account["ratio"], 4),
            "training_images": expanded, "accuracy_mean": score["mean"], "accuracy_std": score["std"],
            "accuracies": score["accuracies"], "distill_seconds": round(distill_seconds, 1),
            "eval_seconds": score["seconds"]}


def make_random(source: Any, ipc: int, path: Path) -> None:
    from habactl.archive_io import write_haba
    from habactl.baselines import random_per_class
    from habactl.codecs import Pipeline
    from habactl.normalization import Normalizer, mean_std

    normalization = mean_std(source.mean(), source.std())
    index = random_per_class(source.train.labels, ipc, source.num_classes, 0)
    bases = Normalizer(normalization)(source.train.images[index])
    write_haba(path, source=source, bases=bases, labels=source.train.labels[index],
               pipeline=Pipeline.from_manifest([], tuple(bases.shape[1:])),
               normalization=normalization, objective="random",
               hyperparameters={"per_class": ipc}, iterations=0, seed=0, ipc=ipc, overwrite=True)


def identity_copy(source: Any, distilled: Path, path: Path) -> None:
    """The same learned bases, with every hallucinator reset to the identity map."""
    from habactl.archive_io import write_haba
    from habactl.codecs import Pipeline
    from habactl.format import open_archive

    with open_archive(distilled) as archive:
        manifest, tensors = archive.manifest, archive.tensors()
    pipeline = Pipeline.from_manifest(manifest["pipeline"], tuple(tensors["bases"].shape[1:]))
    prov = manifest["provenance"]
    write_haba(path, source=source, bases=tensors["bases"], labels=tensors["labels"],
               pipeline=pipeline, normalization=manifest["normalization"],
               objective=prov["objective"],
               hyperparameters={**prov["hyperparameters"], "x-ablation": "identity hallucinators"},
               iterations=prov["iterations"], seed=prov["seed"], ipc=manifest["storage"]["ipc"],
               overwrite=True)


def full_data(args: dict[str, Any]) -> dict[str, Any]:
    """The ceiling: ConvNet-3 on all 4,000 real training images (same protocol family)."""
    import torch

    torch.set_num_threads(1)
    from habactl.data import load_source
    from habactl.evaluation.protocol import Protocol
    from habactl.nets import build_net
    from habactl.evaluation.score import accuracy
    from habactl.evaluation.train import make_augment, train_net
    from habactl.normalization import Normalizer, mean_std

    source = load_source("mnist-5k")
    normalise = Normalizer(mean_std(source.mean(), source.std()))
    epochs = args["full_epochs"]
    protocol = Protocol(epochs=epochs, models=1, seed=args["seed"])
    torch.manual_seed(args["seed"])
    net = build_net("convnet", 1, 28, 28, 10)
    started = time.perf_counter()
    train_net(net, normalise(source.train.images), source.train.labels, protocol, lr=0.01,
              augment=make_augment(protocol, flip=False),
              generator=torch.Generator().manual_seed(args["seed"]))
    score = 100.0 * accuracy(net, normalise(source.test.images), source.test.labels,
                             device=torch.device("cpu"))
    return {"arm": "full", "ipc": None, "label": f"full data (4,000 images, {epochs} epochs, 1 model)",
            "accuracy_mean": round(score, 2), "seconds": round(time.perf_counter() - started, 1)}


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    arms = [r for r in results if r["arm"] != "full"]
    for name in dict.fromkeys(r["arm"] for r in arms):
        points = sorted((r["stored_values"], r["accuracy_mean"], r["accuracy_std"])
                        for r in arms if r["arm"] == name)
        xs, ys, es = zip(*points)
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=name)
    for r in results:
        if r["arm"] == "full":
            ax.axhline(r["accuracy_mean"], color="gray", linestyle="--", label="full data")
    ax.set_xscale("log")
    ax.set_xlabel("stored values (every tensor counted)")
    ax.set_ylabel("ConvNet-3 test accuracy on mnist-5k (%)")
    ax.set_title("accuracy vs true storage")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ipc", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--full-epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--arms", default=None, help="comma list, run in this order; ARM@IPC limits an arm to one IPC "
                        "(default: all arms at IPC 1, the main ones at IPC 10)")
    parser.add_argument("--no-full", action="store_true", help="skip the full-data ceiling")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "accuracy.json")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "results" / "archives")
    args = parser.parse_args()
    settings = {k: getattr(args, k) for k in ("iterations", "epochs", "models", "full_epochs", "seed")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    results = [r for r in previous.get("results", []) if previous.get("settings") == settings]
    done = {(r["arm"], r["ipc"]) for r in results}
    chosen = args.arms.split(",") if args.arms else None
    tasks = []
    if chosen:  # in the order given; "arm@IPC" limits an arm to one IPC
        for entry in chosen:
            name, _, only = entry.partition("@")
            if name not in ARMS:
                parser.error(f"unknown arm {name!r} (known: {', '.join(ARMS)})")
            tasks += [(name, ipc) for ipc in args.ipc
                      if (not only or int(only) == ipc) and (name, ipc) not in done]
    else:
        for ipc in args.ipc:
            for name in DEFAULT_IPC1 if ipc == 1 else DEFAULT_IPC10:
                if (name, ipc) not in done:
                    tasks.append((name, ipc))
    # The identity ablation reuses the HaBa + IDC archive: schedule it after that arm.
    tasks.sort(key=lambda t: t[0] == "ablate-identity")
    print(f"machine: {machine()}")
    print(f"settings: {settings}; {len(tasks)} arms to run, {len(done)} already done")

    def save() -> None:
        payload = {"machine": machine(), "settings": settings, "dm": distill_settings(),
                   "results": results,
                   "command": "python bench/accuracy.py " + " ".join(
                       f"--{k.replace('_', '-')} {v}" for k, v in settings.items())}
        args.out.write_text(json.dumps(payload, indent=2))
        if any(r["arm"] != "full" for r in results):
            plot(results, args.out.with_suffix(".png"))

    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {}
        if not args.no_full and ("full", None) not in done:
            futures[pool.submit(full_data, settings)] = ("full", None)
        identity_tasks = [t for t in tasks if t[0] == "ablate-identity"]
        for name, ipc in (t for t in tasks if t[0] != "ablate-identity"):
            futures[pool.submit(run_arm, name, ipc, settings, str(args.work))] = (name, ipc)
        pending_identity = list(identity_tasks)
        while futures:
            for future in as_completed(list(futures)):
                name, ipc = futures.pop(future)
                try:
                    record = future.result()
                except Exception as error:  # report and keep going: one arm must not sink the run
                    print(f"FAILED {name} ipc {ipc}: {type(error).__name__}: {error}", flush=True)
                    continue
                results.append(record)
                save()
                print(json.dumps(record), flush=True)
                for task in list(pending_identity):
                    if name == "dm-haba-idc" and task[1] == ipc:
                        pending_identity.remove(task)
                        futures[pool.submit(run_arm, *task, settings, str(args.work))] = task
                break
    save()
    print_table(results)


def print_table(results: list[dict[str, Any]]) -> None:
    print(f"\n{'arm':<24} {'IPC':>3} {'stored':>8} {'ratio':>6} {'images':>6} {'accuracy':>14}")
    for r in sorted(results, key=lambda r: (r["ipc"] or 0, r["arm"])):
        if r["arm"] == "full":
            print(f"{'full data':<24} {'-':>3} {'-':>8} {'-':>6} {4000:>6} {r['accuracy_mean']:>8.2f}")
            continue
        print(f"{r['arm']:<24} {r['ipc']:>3} {r['stored_values']:>8,} {r['ratio']:>6.2f} "
              f"{r['training_images']:>6} {r['accuracy_mean']:>7.2f} ± {r['accuracy_std']:.2f}")


if __name__ == "__main__":
    main()
