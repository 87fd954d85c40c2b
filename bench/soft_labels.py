"""Soft labels with every byte counted: hard vs soft vs compressed soft labels at equal
total bytes, beside the field's usual report (labels not counted).

    .venv/bin/python bench/soft_labels.py [--data mnist-5k] [--ipcs 1 10]
        [--objectives sre2l,rded] [--codecs raw,haba+idc] [--forms float16,uint8,top-k:3]
        [--iterations 100] [--epochs 300] [--models 2] [--work bench-work/soft]
        [--out bench/results/soft-labels.json]

One teacher is trained on the data (`habactl teacher`, cached in --work). For every
objective, codec and IPC:

- ``hard``: `compress --ipc N`, evaluated with the standard recipe (cross-entropy on class
  indices; hard class-sorted labels cost nothing, the format implies them);
- ``soft, not counted``: the same archive relabelled by the teacher (float32), evaluated
  with the knowledge-distillation recipe; its bytes exceed the budget by the labels' bytes
  (what papers report: the images' budget, labels on top);
- ``soft <form>``: `compress --ipc N --labels FORM`: the planner pays for the labels in
  that form first (fewer image bytes), the teacher labels the result, evaluated with the
  KD recipe: the same total budget as the hard arm.

An archive whose recipe needs the teacher at training time (online distillation) also
reports its total with the teacher file's bytes. Every command is printed before it runs;
results are appended to --out as they finish (a rerun skips finished rows).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HABACTL = [sys.executable, "-m", "habactl"]


def run(*args: str, cwd: Path, refusal: str | None = None) -> str | None:
    """Run one habactl command (printed first); its stdout. Exits on failure, except
    when its error contains `refusal` (then None: an expected refusal)."""
    command = [*HABACTL, *args]
    print("$ habactl " + " ".join(args), flush=True)
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        if refusal is not None and refusal in result.stderr:
            print(f"  refused: {result.stderr.strip()}", flush=True)
            return None
        sys.exit(f"failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def inspect(path: Path, cwd: Path) -> dict[str, Any]:
    return json.loads(run("inspect", "--json", str(path), cwd=cwd) or "")


def evaluate(path: Path, recipe: str, args: argparse.Namespace, cwd: Path, *extra: str) -> dict:
    """Mean and std of the test accuracy over --models networks (percent)."""
    out = run(
        "evaluate", str(path), "--recipe", recipe, "--epochs", str(args.epochs),
        "--models", str(args.models), "--threads", "1", "--json", "-q", *extra, cwd=cwd,
    )  # fmt: skip
    score = next(iter(json.loads(out or "")["results"].values()))  # the one architecture
    return {"mean": score["mean"], "std": score["std"], "accuracies": score["accuracies"]}


def row(arm: str, path: Path, budget: int, accuracy: dict, info: dict) -> dict[str, Any]:
    counted = int(info["account"]["counted_bytes"])
    labels = info["labels"]
    return {
        "arm": arm,
        "archive": path.name,
        "budget_bytes": budget,
        "counted_bytes": counted,
        "labels_bytes": int(labels["bytes"]) if labels.get("counted") else 0,
        # the teacher an online-distillation recipe needs at training time, counted too
        "with_teacher_bytes": info.get("with_teacher_bytes"),
        "accuracy": accuracy,
    }


def one_setting(
    objective: str, codec: str, ipc: int, args: argparse.Namespace, work: Path, teacher: Path
) -> list[dict[str, Any]]:
    """Every label arm of one (objective, codec, IPC)."""
    tag = f"{objective}-{codec.replace('+', '-')}-ipc{ipc}"
    # rded selects in its first iteration (its default is 1); the others optimise
    steps = [] if objective == "rded" else ["--iterations", str(args.iterations)]
    common = ["--objective", objective, "--teacher", str(teacher), "--codec", codec,
              *steps, "--threads", "1", "-q", "--force"]  # fmt: skip
    hard = work / f"{tag}-hard.haba"
    run("compress", args.data, *common, "--ipc", str(ipc), "-o", str(hard), cwd=work)
    info = inspect(hard, work)
    budget = int(info["account"]["budget_bytes"])
    # rded's archives record the online-distillation recipe: its arm trains with the teacher
    online = ["--teacher", str(teacher)] if info.get("with_teacher_bytes") else []
    rows = [row("hard", hard, budget, evaluate(hard, "standard", args, work), info)]
    if online:
        rows.append(
            row("hard + teacher online (kd)", hard, budget,
                evaluate(hard, "kd", args, work, *online), info)
        )  # fmt: skip
    free = work / f"{tag}-soft-free.haba"
    run("relabel", str(hard), "--teacher", str(teacher), "-o", str(free), "--labels", "float32",
        "--allow-over", "--force", "-q", cwd=work)  # fmt: skip
    rows.append(
        row("soft float32, labels not counted", free, budget,
            evaluate(free, "kd", args, work), inspect(free, work))
    )  # fmt: skip
    for form in args.forms:
        # compress --labels: the planner charges every basis its label row, the teacher
        # labels the distilled set, and images plus labels fit the same budget
        final = work / f"{tag}-{form.replace(':', '')}.haba"
        made = run("compress", args.data, *common, "--ipc", str(ipc), "--labels", form,
                   "-o", str(final), cwd=work, refusal="budget too small")  # fmt: skip
        if made is None:
            note = f"no room: one basis per class and its {form} label exceed the budget"
            rows.append({"arm": f"soft {form}", "budget_bytes": budget, "accuracy": None,
                         "note": note})  # fmt: skip
            continue
        info = inspect(final, work)
        rows.append(
            row(f"soft {form}, counted", final, budget, evaluate(final, "kd", args, work), info)
        )  # fmt: skip
    for entry in rows:
        entry.update(objective=objective, codec=codec, ipc=ipc)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="mnist-5k")
    parser.add_argument("--ipcs", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--objectives", default="sre2l,rded")
    parser.add_argument("--codecs", default="raw,haba+idc")
    parser.add_argument("--forms", default="float16,uint8,top-k:3")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--models", type=int, default=2)
    parser.add_argument("--teacher-epochs", type=int, default=20)
    parser.add_argument("--teacher", type=Path, help="a teacher file (default: train one)")
    parser.add_argument("--work", type=Path, default=ROOT / "bench-work" / "soft")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/soft-labels.json")
    args = parser.parse_args()
    args.forms = [f for f in args.forms.split(",") if f]
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    done: list[dict[str, Any]] = []
    if args.out.exists():  # a rerun skips the settings already measured
        done = json.loads(args.out.read_text())["rows"]
    teacher = args.teacher.resolve() if args.teacher else work / f"teacher-{args.data}.safetensors"
    if not teacher.exists():
        run("teacher", args.data, "-o", str(teacher), "--epochs", str(args.teacher_epochs),
            "--threads", "1", "-q", cwd=work)  # fmt: skip
    started = time.time()
    for objective in args.objectives.split(","):
        for codec in args.codecs.split(","):
            for ipc in args.ipcs:
                key = (objective, codec, ipc)
                if any((r["objective"], r["codec"], r["ipc"]) == key for r in done):
                    continue
                done += one_setting(objective, codec, ipc, args, work, teacher)
                _save(args, done)
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{time.time() - started:.0f} s")  # fmt: skip
    _print_table(done)


def _save(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) for k, v in vars(args).items()}
    args.out.write_text(json.dumps({"settings": settings, "rows": rows}, indent=1) + "\n")


def _print_table(rows: list[dict[str, Any]]) -> None:
    print("| objective | codec | IPC | labels | counted bytes | budget | accuracy % |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        acc = r.get("accuracy")
        score = f"{acc['mean']:.2f} ± {acc['std']:.2f}" if acc else r.get("note", "-")
        counted = r.get("counted_bytes")
        teacher = r.get("with_teacher_bytes")
        shown = "-" if counted is None else f"{counted:,}"
        if teacher:
            shown += f" ({teacher:,} with the teacher)"
        print(f"| {r['objective']} | {r['codec']} | {r['ipc']} | {r['arm']} | {shown} | "
              f"{r['budget_bytes']:,} | {score} |")  # fmt: skip


if __name__ == "__main__":
    main()
