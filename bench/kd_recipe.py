"""The same images trained two ways: the standard recipe and the knowledge-distillation one.

    .venv/bin/python bench/kd_recipe.py [--epochs 100] [--models 1] [--temperature 4]
        [--out bench/results/kd_recipe.json]

Ten real 8x8 images per class of `digits` (seed 0), a ConvNet-BN teacher trained on the
whole training split (3 epochs, habactl.teacher.train_teacher), and three archives of
the same images: hard labels; the teacher's probabilities stored as soft labels (a
relabelled archive); hard labels with a recipe that needs the teacher (online
distillation, RDED-style). Each is scored with `habactl evaluate`'s code
(evaluate_archive): ConvNet-3, final-epoch accuracy on digits' 359 test images. The
published recipe trains 300 epochs; --epochs scales that to what a 2-core CPU does in
minutes. Prints a Markdown table; writes the numbers to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from habactl.data import load_source  # noqa: E402
from habactl.distill.archive import build_manifest  # noqa: E402
from habactl.distill.baselines import random_per_class  # noqa: E402
from habactl.evaluation.protocol import KD, STANDARD, teacher_entry  # noqa: E402
from habactl.evaluation.run import evaluate_archive  # noqa: E402
from habactl.format import save_archive  # noqa: E402
from habactl.format.normalization import Normalizer, mean_std  # noqa: E402
from habactl.teacher import TeacherSettings, train_teacher  # noqa: E402

# arm -> (archive, recipe, targets from the teacher)
ARMS = {
    "hard-standard": ("hard", "standard", False),
    "hard-kd": ("hard", "kd", False),
    "relabelled-standard": ("relabelled", "standard", False),
    "relabelled-kd": ("relabelled", "kd", False),
    "online-kd": ("online", "kd", True),
}


def write(path: Path, source, bases, labels, recommended: dict) -> Path:
    manifest = build_manifest(
        source_name=source.name,
        source_fingerprint=source.fingerprint,
        classes=list(source.classes),
        image_shape=(source.channels, source.height, source.width),
        bases=bases,
        labels=labels,
        pipeline=[],
        normalization=mean_std(source.mean(), source.std()),
        objective="random",
        hyperparameters={"per_class": 10},
        iterations=0,
        seed=0,
        ipc=10,
        protocol=recommended,
    )
    tensors = {"bases": bases.contiguous(), "labels": labels.contiguous()}
    return save_archive(path, tensors, manifest, overwrite=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--models", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=KD.temperature)
    parser.add_argument("--crop-scale", type=float, default=KD.crop_scale)
    parser.add_argument(
        "--arms", default=",".join(ARMS), help=f"comma-separated, of: {', '.join(ARMS)}"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/kd_recipe.json")
    args = parser.parse_args()
    torch.set_num_threads(1)

    source = load_source("digits")
    normalization = mean_std(source.mean(), source.std())
    picked = random_per_class(source.train.labels, 10, source.num_classes, 0)
    bases = Normalizer(normalization)(source.train.images[picked])
    hard = source.train.labels[picked]
    folder = Path(tempfile.mkdtemp(prefix="kd-recipe-"))
    teacher = train_teacher(source, folder / "teacher.safetensors", TeacherSettings(epochs=3))
    soft = teacher.probabilities(bases.to(teacher.device)).cpu()  # the relabelled archive
    kd = KD.with_(temperature=args.temperature, crop_scale=args.crop_scale)
    archives = {
        "hard": write(folder / "hard.haba", source, bases, hard, STANDARD.recommended()),
        "relabelled": write(folder / "soft.haba", source, bases, soft, kd.recommended()),
        "online": write(
            folder / "online.haba",
            source,
            bases,
            hard,
            kd.recommended(teacher=teacher_entry(teacher)),
        ),
    }
    rows = []
    for name in args.arms.split(","):
        archive, kind, online = ARMS[name]
        teacher_path = teacher.path if online else None
        protocol = (STANDARD if kind == "standard" else kd).with_(
            epochs=args.epochs, models=args.models
        )
        started = time.perf_counter()
        report = evaluate_archive(
            archives[archive], protocol=protocol, jobs=1, threads=1, teacher=teacher_path
        )
        score = report.results["convnet"]
        rows.append(
            {
                "arm": name,
                "archive": archive,
                "recipe": kind,
                "targets": "teacher" if teacher_path else "stored labels",
                "epochs": args.epochs,
                "temperature": protocol.temperature if kind == "kd" else None,
                "crop_scale": protocol.crop_scale if kind == "kd" else None,
                "mean": score.mean,
                "std": score.std,
                "models": score.models,
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
        print(rows[-1], flush=True)
    result = {
        "teacher_test_accuracy": teacher.info.training.get("test_accuracy"),
        "rows": rows,
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print("\n| archive | recipe | targets | accuracy % |\n|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['archive']} | {row['recipe']} | {row['targets']} | "
            f"{row['mean']:.2f} ± {row['std']:.2f} |"
        )


if __name__ == "__main__":
    main()
