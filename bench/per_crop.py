"""Per-crop labels with every byte counted: what SRe2L-style relabelling (a teacher label
per crop per epoch) buys, what it costs, and what is left of it within the budget.

    .venv/bin/python bench/per_crop.py --teacher t.safetensors [--data mnist-5k] [--ipc 1]
        [--objectives rded,sre2l] [--codec haba+idc] [--form top-k:3] [--crops 300]
        [--image-shares 0.5,0.75] [--iterations 30] [--epochs 300] [--models 1]
        [--work bench-work/per-crop] [--out bench/results/per-crop-labels.json]

For every objective (each archive evaluated with its own knowledge-distillation recipe,
which trains on the stored crops):

- ``per-crop, not counted``: `compress --ipc N`, then `relabel --crops C`: C epochs of
  views of every training image, each with the teacher's label, far over the budget
  (what a paper reporting the images' budget alone would show);
- ``per-crop, counted, images S``: `compress --budget-bytes S × budget` leaves the rest of
  the budget for views: `relabel --crops E` with the most epochs E whose labels fit, so
  images and labels together stay within the budget; training cycles the E epochs.

Every command is printed before it runs; results are appended to --out as they finish (a
rerun skips finished rows). Compare with bench/soft_labels.py's per-image arms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from soft_labels import ROOT, inspect, run  # noqa: E402  (a sibling script)

VIEW_BYTES = 9  # a view's box (4 x float16) and mirror flag (1 byte), besides its label


def evaluate_kd(path: Path, args: argparse.Namespace, cwd: Path) -> dict[str, Any]:
    """The archive's own recipe (kd, on its stored crops): test accuracy in percent."""
    out = run("evaluate", str(path), "--epochs", str(args.epochs), "--models",
              str(args.models), "--threads", "1", "--json", "-q", cwd=cwd)  # fmt: skip
    report = json.loads(out or "")
    score = next(iter(report["results"].values()))
    return {
        "mean": score["mean"],
        "std": score["std"],
        "accuracies": score["accuracies"],
        "crop_epochs": report["protocol"].get("crop_epochs"),
    }


def row_bytes(form: str, classes: int) -> int:
    """A label row's bytes in `form` (top-k:K with U8 indices, float16, uint8, float32)."""
    if form.startswith("top-k:"):
        return int(form.split(":")[1]) * 3
    return {"float16": 2 * classes, "uint8": classes + 4, "float32": 4 * classes}[form]


def one_objective(objective: str, args: argparse.Namespace, work: Path, teacher: Path) -> list:
    tag = f"{objective}-{args.codec.replace('+', '-')}-ipc{args.ipc}"
    steps = [] if objective == "rded" else ["--iterations", str(args.iterations)]
    common = ["--objective", objective, "--teacher", str(teacher), "--codec", args.codec,
              *steps, "--threads", "1", "-q", "--force"]  # fmt: skip
    rows = []
    full = work / f"{tag}.haba"
    run("compress", args.data, *common, "--ipc", str(args.ipc), "-o", str(full), cwd=work)
    budget = int(inspect(full, work)["account"]["budget_bytes"])
    free = work / f"{tag}-c{args.crops}.haba"
    run("relabel", str(full), "--teacher", str(teacher), "-o", str(free), "--labels", args.form,
        "--crops", str(args.crops), "--allow-over", "--force", "-q", cwd=work)  # fmt: skip
    rows.append(_row("per-crop, not counted", free, budget, evaluate_kd(free, args, work), work))
    for share in args.image_shares:
        smaller = work / f"{tag}-b{share:g}.haba"
        run("compress", args.data, *common, "--budget-bytes", str(int(share * budget)),
            "-o", str(smaller), cwd=work)  # fmt: skip
        info = inspect(smaller, work)
        classes = len(info["manifest"]["classes"])
        bases, images = int(info["manifest"]["bases"]["count"]), int(info["expanded_items"])
        row = row_bytes(args.form, classes)
        room = budget - int(info["account"]["counted_bytes"]) - bases * row
        epochs = room // (images * (row + VIEW_BYTES))
        if epochs < 1:
            rows.append(
                {
                    "arm": f"per-crop, counted, images {share:g}",
                    "accuracy": None,
                    "budget_bytes": budget,
                    "note": "no room for one epoch of views",
                }
            )
            continue
        final = work / f"{tag}-b{share:g}-c{epochs}.haba"
        run("relabel", str(smaller), "--teacher", str(teacher), "-o", str(final),
            "--labels", args.form, "--crops", str(epochs), "--allow-over", "--force", "-q",
            cwd=work)  # fmt: skip
        arm = f"per-crop, counted, images {share:g} of the budget"
        rows.append(_row(arm, final, budget, evaluate_kd(final, args, work), work))
    for entry in rows:
        entry.update(objective=objective, codec=args.codec, ipc=args.ipc, form=args.form)
    return rows


def _row(arm: str, path: Path, budget: int, accuracy: dict, work: Path) -> dict[str, Any]:
    info = inspect(path, work)
    return {
        "arm": arm,
        "archive": path.name,
        "budget_bytes": budget,
        "counted_bytes": int(info["account"]["counted_bytes"]),
        "labels_bytes": int(info["labels"]["bytes"]),
        "images_bytes": int(info["labels"]["images_bytes"]),
        "training_images": int(info["expanded_items"]),
        "accuracy": accuracy,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", type=Path, required=True, help="a teacher file")
    parser.add_argument("--data", default="mnist-5k")
    parser.add_argument("--ipc", type=int, default=1)
    parser.add_argument("--objectives", default="rded,sre2l")
    parser.add_argument("--codec", default="haba+idc")
    parser.add_argument("--form", default="top-k:3")
    parser.add_argument("--crops", type=int, default=300)
    parser.add_argument("--image-shares", default="0.5,0.75")
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--models", type=int, default=1)
    parser.add_argument("--work", type=Path, default=ROOT / "bench-work" / "per-crop")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/per-crop-labels.json")
    args = parser.parse_args()
    args.image_shares = [float(s) for s in args.image_shares.split(",") if s]
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    done: list[dict[str, Any]] = []
    if args.out.exists():  # a rerun skips the objectives already measured
        done = json.loads(args.out.read_text())["rows"]
    started = time.time()
    for objective in args.objectives.split(","):
        if any(r["objective"] == objective for r in done):
            continue
        done += one_objective(objective, args, work, args.teacher.resolve())
        args.out.parent.mkdir(parents=True, exist_ok=True)
        settings = {k: str(v) for k, v in vars(args).items()}
        machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
        payload = {"settings": settings, "machine": machine, "rows": done}
        args.out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{time.time() - started:.0f} s")  # fmt: skip
    print("| objective | labels | training images | counted bytes (labels) | budget | accuracy % |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in done:
        acc = r.get("accuracy")
        score = f"{acc['mean']:.1f}" if acc else r.get("note", "-")
        counted = f"{r['counted_bytes']:,} ({r['labels_bytes']:,})" if acc else "-"
        print(f"| {r['objective']} | {r['arm']} | {r.get('training_images', '-')} | {counted} | "
              f"{r['budget_bytes']:,} | {score} |")  # fmt: skip


if __name__ == "__main__":
    main()
