"""Accuracy versus TRUE storage budget on mnist-5k, for every codec.

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
import sys
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
    "dm-haba-channel": (
        "dm",
        {"codec": "haba", "hallucinator_arch": "channel-affine"},
        "DM, HaBa channel-affine",
    ),
    "dm-haba-pixel": (
        "dm",
        {"codec": "haba", "hallucinator_arch": "pixel-affine"},
        "DM, HaBa pixel-affine",
    ),
    "dm-haba-idc": ("dm", {"codec": "haba+idc", "factor": 2}, "DM, HaBa + IDC"),
    "dm-haba-idc-refcount": (
        "dm",
        {"codec": "haba+idc", "factor": 2, "counts": "bases"},
        "DM, HaBa + IDC, reference counting (stores MORE than its budget)",
    ),
    # Ablations of the HaBa + IDC arm (IPC 1 only by default).
    "ablate-k1": (
        "dm",
        {"codec": "haba+idc", "factor": 2, "hallucinators": 1},
        "ablation: HaBa + IDC with K = 1",
    ),
    "ablate-no-contrastive": (
        "dm",
        {"codec": "haba+idc", "factor": 2, "contrastive": False},
        "ablation: HaBa + IDC, contrastive term off",
    ),
    "explore-k3": (
        "dm",
        {"codec": "haba+idc", "factor": 2, "hallucinators": 3},
        "HaBa + IDC with K = 3 (more bases)",
    ),
    "explore-k10": (
        "dm",
        {"codec": "haba+idc", "factor": 2, "hallucinators": 10},
        "HaBa + IDC with K = 10 (fewer bases)",
    ),
    "explore-k20": (
        "dm",
        {"codec": "haba+idc", "factor": 2, "hallucinators": 20},
        "HaBa + IDC with K = 20 (fewer bases)",
    ),
    "ablate-identity": (
        "identity",
        {"codec": "haba+idc", "factor": 2},
        "ablation: the HaBa + IDC bases with identity hallucinators",
    ),
    # The other objectives, IPC 1, with settings scaled to this CPU (see --help).
    "dc-raw": ("dc", {"codec": "raw"}, "DC, raw images"),
    "dc-haba-idc": ("dc", {"codec": "haba+idc", "factor": 2}, "DC, HaBa + IDC"),
    "dsa-raw": ("dsa", {"codec": "raw"}, "DSA, raw images"),
    "dsa-haba-idc": ("dsa", {"codec": "haba+idc", "factor": 2}, "DSA, HaBa + IDC"),
    "mtt-raw": ("mtt", {"codec": "raw"}, "MTT, raw images"),
    "mtt-haba-idc": ("mtt", {"codec": "haba+idc", "factor": 2}, "MTT, HaBa + IDC"),
    "dd-raw": ("dd", {"codec": "raw"}, "DD, raw images"),
    "dd-haba-idc": ("dd", {"codec": "haba+idc", "factor": 2}, "DD, HaBa + IDC"),
    "dd-idc-labels": (
        "dd",
        {"codec": "idc", "factor": 2, "objective_settings": {"learn_labels": True}},
        "DD, IDC, learned labels",
    ),
    "dd-haba-idc-labels": (
        "dd",
        {"codec": "haba+idc", "factor": 2, "objective_settings": {"learn_labels": True}},
        "DD, HaBa + IDC, learned labels",
    ),
    "kip-raw": ("kip", {"codec": "raw"}, "KIP, raw images"),
    "kip-haba-idc": ("kip", {"codec": "haba+idc", "factor": 2}, "KIP, HaBa + IDC"),
    "dcc-raw": ("dcc", {"codec": "raw"}, "DCC (with DSA), raw images"),
    "dcc-haba-idc": ("dcc", {"codec": "haba+idc", "factor": 2}, "DCC (with DSA), HaBa + IDC"),
    "cafe-raw": ("cafe", {"codec": "raw"}, "CAFE, raw images"),
    "cafe-haba-idc": ("cafe", {"codec": "haba+idc", "factor": 2}, "CAFE, HaBa + IDC"),
    # The teacher-driven objectives read a teacher trained on mnist-5k (--teacher, or one
    # trained in --work for --teacher-epochs).
    "sre2l-raw": ("sre2l", {"codec": "raw"}, "SRe2L recovery, raw images"),
    "sre2l-haba-idc": ("sre2l", {"codec": "haba+idc", "factor": 2}, "SRe2L recovery, HaBa + IDC"),
    "rded-raw": ("rded", {"codec": "raw"}, "RDED selection, raw images (f = 1)"),
    "rded-haba-idc": ("rded", {"codec": "haba+idc", "factor": 2}, "RDED selection, HaBa + IDC"),
}
TEACHER_OBJECTIVES = ("sre2l", "rded")
# Each storage (raw, IDC, DCT coefficients, HaBa + IDC) at float32, float16
# and uint8 under the same byte budget; fewer bytes per value buy more bases.
STORAGES: dict[str, tuple[dict[str, Any], str]] = {
    "dm-raw": ({"codec": "raw"}, "DM, raw images"),
    "dm-idc": ({"codec": "idc", "factor": 2}, "DM, IDC (factor 2)"),
    "dm-freq": ({"codec": "raw", "frequency": 98}, "DM, 98 DCT coefficients"),
    "dm-haba-idc": ({"codec": "haba+idc", "factor": 2}, "DM, HaBa + IDC"),
}
ARMS["dm-freq"] = ("dm", STORAGES["dm-freq"][0], STORAGES["dm-freq"][1])
for _storage, (_overrides, _label) in STORAGES.items():
    for _suffix, _dtype in (("f16", "float16"), ("u8", "uint8")):
        ARMS[f"{_storage}-{_suffix}"] = (
            "dm",
            {**_overrides, "quantize": _dtype},
            f"{_label}, {_dtype} bases",
        )
BYTES_ARMS = [name for name in ARMS if name.split("-")[-1] in ("f16", "u8")] + ["dm-freq"]
OBJECTIVE_ARMS = [
    name
    for name, (objective, _, _) in ARMS.items()
    if objective != "dm"  # dm: the default arms
]
DEFAULT_IPC1 = [name for name in ARMS if name not in OBJECTIVE_ARMS + BYTES_ARMS]
DEFAULT_IPC10 = [
    "dm-haba-idc",
    "dm-idc",
    "dm-haba-channel",
    "dm-haba-pixel",
    "dm-raw",
    "random",
    "dm-haba-idc-refcount",
]


def machine() -> str:
    import torch

    return (
        f"{platform.machine()} · {os.cpu_count()} CPUs · torch {torch.__version__} · "
        f"Python {platform.python_version()}"
    )


def distill_settings() -> dict[str, Any]:
    """The DM settings every distilled arm shares (engine and objective defaults)."""
    import dataclasses

    from habactl.distill.engine import DistillConfig
    from habactl.distill.objectives.dm import DistributionMatching

    shared = {
        f.name: f.default
        for f in dataclasses.fields(DistillConfig)
        if f.name
        in (
            "lr_bases",
            "lr_hallucinators",
            "momentum",
            "init",
            "hallucinators",
            "hallucinator_arch",
            "augment",
            "leftover",
        )
    }
    return {**shared, **DistributionMatching.defaults}


def run_arm(
    name: str,
    ipc: int,
    args: dict[str, Any],
    folder: str,
    reuse: bool = False,
    distill_seed: int = 0,
) -> dict[str, Any]:
    """Distil (or select) one arm and evaluate it; runs in a worker process.

    With `reuse`, an archive already in `folder` is evaluated as it is (distillation is
    byte-reproducible with the same settings and seed, so this only skips repeated work);
    its distillation time is then unknown and recorded as None. `distill_seed` seeds the
    distillation only; the evaluation's seed is always `args["seed"]`."""
    import torch

    torch.set_num_threads(1)
    from habactl.evaluation.protocol import Protocol
    from habactl.evaluation.run import evaluate_archive
    from habactl.format import open_archive, storage_account

    label = ARMS[name][2]
    path = arm_path(folder, name, ipc, distill_seed)
    if reuse and path.exists():
        distill_seconds = None
    else:
        started = time.perf_counter()
        make_arm(name, ipc, {**args, "distill_seed": distill_seed}, folder, path)
        distill_seconds = round(time.perf_counter() - started, 1)
    protocol = Protocol(epochs=args["epochs"], models=args["models"], seed=args["seed"])
    result = evaluate_archive(path, protocol=protocol, archs=("convnet",), threads=1)
    with open_archive(path) as archive:
        account = storage_account(archive.manifest)
        expanded = archive.layout.expanded_items
    score = result.results["convnet"].to_json()
    return {
        "arm": name,
        "ipc": ipc,
        "label": label,
        "distill_seed": distill_seed,
        "stored_values": account.stored_values,
        "budget_values": account.budget_values,
        "ratio": round(account.ratio, 4),
        "counted_bytes": account.counted_bytes,
        "budget_bytes": account.budget_bytes,
        "ratio_bytes": round(account.ratio_bytes, 4),
        "training_images": expanded,
        "accuracy_mean": score["mean"],
        "accuracy_std": score["std"],
        "accuracies": score["accuracies"],
        "distill_seconds": distill_seconds,
        "eval_seconds": score["seconds"],
    }


def arm_path(folder: str | Path, name: str, ipc: int, distill_seed: int) -> Path:
    """Where one arm's archive goes (seed 0 keeps the names earlier runs used)."""
    seed = f"-s{distill_seed}" if distill_seed else ""
    return Path(folder) / f"{name}-ipc{ipc}{seed}.haba"


def make_arm(name: str, ipc: int, args: dict[str, Any], folder: str, path: Path) -> None:
    """Write arm `name`'s archive at `path`: random selection, a distillation, or (the
    identity ablation) the HaBa + IDC archive with its hallucinators reset."""
    from habactl.data import load_source
    from habactl.distill.engine import distill

    objective, overrides, _ = ARMS[name]
    source = load_source("mnist-5k")
    if objective == "random":
        make_random(source, ipc, path)
        return
    based_on = "dm-haba-idc" if objective == "identity" else name
    base_path = arm_path(folder, based_on, ipc, args.get("distill_seed", 0))
    if not (objective == "identity" and base_path.exists()):
        distill(source, arm_config(objective, ipc, overrides, args, folder), base_path, force=True)
    if objective == "identity":
        identity_copy(source, base_path, path)


def arm_config(
    objective: str, ipc: int, overrides: dict[str, Any], args: dict[str, Any], folder: str
) -> Any:
    """The DistillConfig of one arm: DM at the shared settings, or another objective with
    its own engine defaults (as `habactl compress --objective X` uses) and scaled counts."""
    from habactl.distill.engine import DistillConfig
    from habactl.distill.objectives import get_objective

    seed = args.get("distill_seed", args["seed"])
    common = {"ipc": ipc, "seed": seed, "device": "cpu", "checkpoint_every": 10**9}
    if objective in ("dm", "identity"):
        return DistillConfig(objective="dm", iterations=args["iterations"], **common, **overrides)
    settings: dict[str, Any] = {}
    if objective == "mtt":
        settings = {"experts": str(Path(folder) / "experts"), "syn_steps": args["syn_steps"]}
    if objective in TEACHER_OBJECTIVES:
        settings = {"teacher": str(teacher_path(folder, args))}
    overrides = dict(overrides)  # an arm's own objective settings (dd's learned labels)
    settings.update(overrides.pop("objective_settings", {}))
    engine_defaults = getattr(get_objective(objective), "engine_defaults", {})
    values = {**engine_defaults, **common, **overrides}
    # an objective that says how many iterations it takes (rded: 1, the selection) keeps it
    values["iterations"] = engine_defaults.get("iterations", args["objective_iterations"])
    return DistillConfig(**values, objective=objective, objective_settings=settings)


def teacher_path(folder: str | Path, args: dict[str, Any]) -> Path:
    """The teacher the sre2l and rded arms read: --teacher, else the one in --work."""
    given = args.get("teacher")
    return Path(given) if given else Path(folder) / "teacher.safetensors"


def train_teacher_file(folder: Path, args: dict[str, Any]) -> None:
    """Train the arms' teacher on mnist-5k (skipped when --teacher names one, or when the
    work folder already holds it)."""
    import torch

    from habactl.data import load_source
    from habactl.teacher import TeacherSettings, train_teacher

    path = teacher_path(folder, args)
    if args.get("teacher") or path.exists():
        return
    torch.set_num_threads(1)
    started = time.perf_counter()
    settings = TeacherSettings(epochs=args["teacher_epochs"], seed=args["seed"], device="cpu")
    teacher = train_teacher(load_source("mnist-5k"), path, settings)
    accuracy = teacher.info.training.get("test_accuracy")
    print(
        f"teacher ready ({args['teacher_epochs']} epochs, test accuracy {accuracy}, "
        f"{time.perf_counter() - started:.0f} s)",
        flush=True,
    )


def train_buffer(folder: Path, args: dict[str, Any]) -> None:
    """The experts the mtt arms match (resumable; skipped when already there)."""
    import torch

    from habactl.data import load_source
    from habactl.experts import ExpertSettings, train_experts

    torch.set_num_threads(1)
    started = time.perf_counter()
    train_experts(
        load_source("mnist-5k"),
        folder / "experts",
        ExpertSettings(
            experts=args["experts"], epochs=args["expert_epochs"], seed=args["seed"], device="cpu"
        ),
    )
    print(
        f"experts buffer ready ({args['experts']} x {args['expert_epochs']} epochs, "
        f"{time.perf_counter() - started:.0f} s)",
        flush=True,
    )


def make_random(source: Any, ipc: int, path: Path) -> None:
    from habactl.distill.baselines import random_archive

    random_archive(source, path, ipc=ipc, seed=0, overwrite=True)


def identity_copy(source: Any, distilled: Path, path: Path) -> None:
    """The same learned bases, with every hallucinator reset to the identity map."""
    from habactl.codecs import Pipeline
    from habactl.distill.archive import write_haba
    from habactl.format import open_archive

    with open_archive(distilled) as archive:
        info, tensors = archive.info, archive.tensors()
    pipeline = Pipeline.from_manifest(info.pipeline_entries(), tuple(tensors["bases"].shape[1:]))
    prov = info.provenance
    write_haba(
        path,
        source=source,
        bases=tensors["bases"],
        labels=tensors["labels"],
        pipeline=pipeline,
        normalization=info.normalization.to_json(),
        objective=prov.objective,
        hyperparameters={**prov.hyperparameters, "x-ablation": "identity hallucinators"},
        iterations=prov.iterations,
        seed=prov.seed,
        ipc=info.storage.ipc,
        overwrite=True,
    )


def full_data(args: dict[str, Any]) -> dict[str, Any]:
    """The ceiling: ConvNet-3 on all 4,000 real training images (same protocol family)."""
    import torch

    torch.set_num_threads(1)
    from habactl.data import load_source
    from habactl.evaluation.protocol import Protocol
    from habactl.evaluation.score import accuracy
    from habactl.evaluation.train import make_augment, train_net
    from habactl.format.normalization import Normalizer, mean_std
    from habactl.nets import build_net

    source = load_source("mnist-5k")
    normalise = Normalizer(mean_std(source.mean(), source.std()))
    epochs = args["full_epochs"]
    protocol = Protocol(epochs=epochs, models=1, seed=args["seed"])
    torch.manual_seed(args["seed"])
    net = build_net("convnet", 1, 28, 28, 10)
    started = time.perf_counter()
    train_net(
        net,
        normalise(source.train.images),
        source.train.labels,
        protocol,
        lr=0.01,
        augment=make_augment(protocol, flip=False),
        generator=torch.Generator().manual_seed(args["seed"]),
    )
    score = 100.0 * accuracy(
        net, normalise(source.test.images), source.test.labels, device=torch.device("cpu")
    )
    return {
        "arm": "full",
        "ipc": None,
        "label": f"full data (4,000 images, {epochs} epochs, 1 model)",
        "accuracy_mean": round(score, 2),
        "seconds": round(time.perf_counter() - started, 1),
    }


def pooled(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (arm, IPC): every model of every distillation seed pooled (mean ± std
    over all of them, population std), the first seed's storage figures."""
    import statistics

    rows: dict[tuple[str, Any], dict[str, Any]] = {}
    for r in results:
        if r["arm"] == "full":
            continue
        row = rows.setdefault(
            (r["arm"], r["ipc"]), {**r, "accuracies": [], "seeds": [], "models_per_seed": []}
        )
        mine = list(r.get("accuracies") or [r["accuracy_mean"]])
        row["accuracies"] = row["accuracies"] + mine
        row["seeds"].append(r.get("distill_seed", 0))
        row["models_per_seed"].append(len(mine))
    for row in rows.values():
        row["accuracy_mean"] = round(statistics.fmean(row["accuracies"]), 2)
        row["accuracy_std"] = round(statistics.pstdev(row["accuracies"]), 2)
    return list(rows.values())


def draw_arms(ax: Any, results: list[dict[str, Any]], colours: Any = None) -> None:
    """One errorbar line per arm (seeds pooled), in the order the arms first appear, and
    the full-data ceiling; the x axis is counted bytes when every arm recorded them,
    stored values otherwise. `colours`: a sequence to cycle instead of the default."""
    arms = pooled(results)
    in_bytes = all("counted_bytes" in r for r in arms)
    x_key = "counted_bytes" if in_bytes else "stored_values"
    for index, name in enumerate(dict.fromkeys(r["arm"] for r in arms)):
        points = sorted(
            (r[x_key], r["accuracy_mean"], r["accuracy_std"]) for r in arms if r["arm"] == name
        )
        xs, ys, es = zip(*points)
        colour = None if colours is None else colours[index % len(colours)]
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=name, color=colour)
    for r in results:
        if r["arm"] == "full":
            ax.axhline(
                r["accuracy_mean"], color="gray", linestyle="--", label=r.get("label", "full data")
            )
    ax.set_xscale("log")
    ax.set_xlabel(
        "counted bytes (every stored tensor)"
        if in_bytes
        else "stored values (every tensor counted)"
    )
    ax.set_ylabel("ConvNet-3 test accuracy on mnist-5k (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot(results: list[dict[str, Any]], path: Path, note: str = "") -> None:
    """Accuracy versus stored size (see `draw_arms`); `note` goes under the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    draw_arms(ax, results)
    ax.set_title("accuracy vs true storage" + (f"\n{note}" if note else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ipc", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--full-epochs", type=int, default=15)
    parser.add_argument(
        "--seed", type=int, default=0, help="evaluation seed (and default distillation seed)"
    )
    parser.add_argument(
        "--distill-seeds",
        type=int,
        nargs="+",
        default=None,
        help="distil every arm once per seed (default: --seed); accuracy pools over seeds",
    )
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--arms",
        default=None,
        help="comma list, run in this order; ARM@IPC limits an arm to one IPC "
        "(default: all arms at IPC 1, the main ones at IPC 10)",
    )
    parser.add_argument("--no-full", action="store_true", help="skip the full-data ceiling")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "accuracy.json")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "results" / "archives")
    parser.add_argument(
        "--objective-iterations",
        type=int,
        default=60,
        help="iterations of the dc, dsa, mtt and kip arms (each costs 1-30 s here)",
    )
    parser.add_argument("--syn-steps", type=int, default=10, help="mtt student steps per iteration")
    parser.add_argument("--experts", type=int, default=2, help="mtt: experts in the buffer")
    parser.add_argument("--expert-epochs", type=int, default=10, help="mtt: epochs per expert")
    parser.add_argument(
        "--teacher",
        default=None,
        help="sre2l, rded: the teacher file (default: one trained on mnist-5k in --work)",
    )
    parser.add_argument(
        "--teacher-epochs", type=int, default=10, help="sre2l, rded: epochs of that teacher"
    )
    parser.add_argument(
        "--reuse-archives",
        action="store_true",
        help="evaluate archives already in --work instead of distilling them again "
        "(only valid when they were made with the same settings)",
    )
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="*",
        default=[],
        help="add the results of other runs' JSON files (same settings) and re-plot",
    )
    args = parser.parse_args()
    keys = ["iterations", "epochs", "models", "full_epochs", "seed"]
    if args.arms and any(a.partition("@")[0] in OBJECTIVE_ARMS for a in args.arms.split(",")):
        keys += ["objective_iterations", "syn_steps", "experts", "expert_epochs"]
    if args.arms and any(
        ARMS.get(a.partition("@")[0], ("",))[0] in TEACHER_OBJECTIVES for a in args.arms.split(",")
    ):
        keys += ["teacher", "teacher_epochs"]
    settings = {k: getattr(args, k) for k in keys}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    results = [
        r for r in previous.get("results", []) if same_settings(previous.get("settings"), settings)
    ]
    for extra in args.merge:
        other = json.loads(extra.read_text())
        if not same_settings(other.get("settings"), settings):
            parser.error(f"{extra}: made with other settings ({other.get('settings')})")
        seen = {task_key(r, args.seed) for r in results}
        results += [r for r in other["results"] if task_key(r, args.seed) not in seen]
    done = {task_key(r, args.seed) for r in results}
    seeds = args.distill_seeds or [args.seed]
    chosen = args.arms.split(",") if args.arms else None
    tasks = []
    if chosen:  # in the order given; "arm@IPC" limits an arm to one IPC
        for entry in chosen:
            name, _, only = entry.partition("@")
            if name not in ARMS:
                parser.error(f"unknown arm {name!r} (known: {', '.join(ARMS)})")
            tasks += [
                (name, ipc, seed)
                for ipc in args.ipc
                for seed in seeds
                if (not only or int(only) == ipc) and (name, ipc, seed) not in done
            ]
    else:
        for ipc in args.ipc:
            for name in DEFAULT_IPC1 if ipc == 1 else DEFAULT_IPC10:
                tasks += [(name, ipc, seed) for seed in seeds if (name, ipc, seed) not in done]
    # The identity ablation reuses the HaBa + IDC archive: schedule it after that arm.
    tasks.sort(key=lambda t: t[0] == "ablate-identity")
    print(f"machine: {machine()}")
    print(f"settings: {settings}; {len(tasks)} arms to run, {len(done)} already done")

    def save() -> None:
        payload = {
            "machine": machine(),
            "settings": settings,
            "dm": distill_settings(),
            "results": results,
            "command": " ".join(["python", "bench/accuracy.py", *sys.argv[1:]]),
        }
        args.out.write_text(json.dumps(payload, indent=2))
        if any(r["arm"] != "full" for r in results):
            plot(results, args.out.with_suffix(".png"))

    if any(name in ("mtt-raw", "mtt-haba-idc") for name, _, _ in tasks):
        train_buffer(args.work, settings)
    if any(ARMS[name][0] in TEACHER_OBJECTIVES for name, _, _ in tasks):
        train_teacher_file(args.work, settings)
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {}
        if not args.no_full and ("full", None, args.seed) not in done:
            futures[pool.submit(full_data, settings)] = ("full", None, args.seed)
        identity_tasks = [t for t in tasks if t[0] == "ablate-identity"]
        for name, ipc, seed in (t for t in tasks if t[0] != "ablate-identity"):
            futures[
                pool.submit(run_arm, name, ipc, settings, str(args.work), args.reuse_archives, seed)
            ] = (name, ipc, seed)
        pending_identity = list(identity_tasks)
        while futures:
            for future in as_completed(list(futures)):
                name, ipc, seed = futures.pop(future)
                try:
                    record = future.result()
                except Exception as error:  # report and keep going: one arm must not sink the run
                    print(f"FAILED {name} ipc {ipc}: {type(error).__name__}: {error}", flush=True)
                    continue
                results.append(record)
                save()
                print(json.dumps(record), flush=True)
                for task in list(pending_identity):
                    if name == "dm-haba-idc" and task[1:] == (ipc, seed):
                        pending_identity.remove(task)
                        futures[
                            pool.submit(
                                run_arm,
                                *task[:2],
                                settings,
                                str(args.work),
                                args.reuse_archives,
                                task[2],
                            )
                        ] = task
                break
    save()
    print_table(results)


def task_key(record: dict[str, Any], default_seed: int) -> tuple[str, int | None, int]:
    """(arm, IPC, distillation seed) of a result; earlier runs distilled with --seed."""
    return record["arm"], record["ipc"], record.get("distill_seed", default_seed)


def same_settings(a: dict[str, Any] | None, b: dict[str, Any]) -> bool:
    """Runs agree on every setting both of them record (the objective arms add some)."""
    return a is not None and all(a[k] == b[k] for k in a.keys() & b.keys())


def print_table(results: list[dict[str, Any]]) -> None:
    print(
        f"\n{'arm':<24} {'IPC':>3} {'bytes':>8} {'ratio':>6} {'images':>6} {'n':>3} "
        f"{'accuracy':>14}"
    )
    for r in results:
        if r["arm"] == "full":
            print(
                f"{'full data':<24} {'-':>3} {'-':>8} {'-':>6} {4000:>6} {1:>3} "
                f"{r['accuracy_mean']:>8.2f}"
            )
    for r in sorted(pooled(results), key=lambda r: (r["ipc"] or 0, r["arm"])):
        size = r.get("counted_bytes", r["stored_values"])
        ratio = r.get("ratio_bytes", r["ratio"])
        print(
            f"{r['arm']:<24} {r['ipc']:>3} {size:>8,} {ratio:>6.2f} {r['training_images']:>6} "
            f"{len(r['accuracies']):>3} {r['accuracy_mean']:>7.2f} ± {r['accuracy_std']:.2f}"
        )


if __name__ == "__main__":
    main()
