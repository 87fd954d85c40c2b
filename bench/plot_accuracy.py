"""One accuracy-vs-stored-values plot from several `bench/accuracy.py` result files.

    python bench/plot_accuracy.py bench/results/accuracy.json bench/results/accuracy-ipc10.json \
        -o bench/results/accuracy-all.png

Runs at different IPCs may use different evaluation settings (the IPC-10 run here used
fewer epochs and models to fit the CPU); the title names each file's settings. When two
files hold the same arm, IPC and distillation seed, the record with more models is kept.
`--table` also prints one Markdown row per arm and IPC (models of every seed pooled).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import ARMS, plot, pooled  # noqa: E402


def keep_largest(records: list[dict]) -> list[dict]:
    """One record per (arm, IPC, distillation seed): the one with the most models."""
    best: dict[tuple, dict] = {}
    for r in records:
        key = (r["arm"], r["ipc"], r.get("distill_seed", 0))
        if key not in best or len(r.get("accuracies") or []) > len(
            best[key].get("accuracies") or []
        ):
            best[key] = r
    return list(best.values())


def markdown(results: list[dict]) -> str:
    """Rows: arm, IPC, counted bytes, x budget, training images, seeds x models, accuracy."""
    lines = [
        "| arm | IPC | counted bytes | × budget | training images | seeds × models "
        "| accuracy (%) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(pooled(results), key=lambda r: (r["ipc"], -r["accuracy_mean"])):
        counts = [n for _, n in sorted(zip(r["seeds"], r["models_per_seed"]))]  # by seed
        models = (
            " + ".join(map(str, counts)) if len(set(counts)) > 1 else f"{len(counts)} × {counts[0]}"
        )
        lines.append(
            f"| {ARMS[r['arm']][2]} (`{r['arm']}`) | {r['ipc']} | {r['counted_bytes']:,} | "
            f"{r['ratio_bytes']:.3f} | {r['training_images']:,} | {models} | "
            f"{r['accuracy_mean']:.2f} ± {r['accuracy_std']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "results", type=Path, nargs="+", help="JSON files written by bench/accuracy.py"
    )
    parser.add_argument("-o", "--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--arms", help="comma list of arms to show (default: all)")
    parser.add_argument("--table", action="store_true", help="print a Markdown table too")
    args = parser.parse_args()
    wanted = set(args.arms.split(",")) if args.arms else None
    results = []
    notes = []
    for path in args.results:
        payload = json.loads(path.read_text())
        s = payload["settings"]
        for record in payload["results"]:
            if wanted is None or record["arm"] in wanted:
                results.append(record)
        ipcs = sorted({r["ipc"] for r in payload["results"] if r["ipc"] is not None})
        notes.append(
            f"IPC {'/'.join(map(str, ipcs))}: {s['epochs']} epochs, {s['models']} model(s)"
        )
        print(
            f"{path}: {len(payload['results'])} results "
            f"({s['epochs']} epochs, {s['models']} models)"
        )
    results = keep_largest(results)
    plot(results, args.out, note="evaluation — " + "; ".join(notes))
    print(f"wrote {args.out}")
    if args.table:
        print(markdown(results))


if __name__ == "__main__":
    main()
