"""Which storage buys the most accuracy per byte: one figure, two panels.

    python bench/plot_bytes.py bench/results/accuracy-bytes-*.json \
        -o bench/results/accuracy-bytes.png

Left: accuracy versus counted bytes (every stored tensor), one line per arm across the
IPCs it ran at. Right: for each storage (raw, IDC, DCT coefficients, HaBa + IDC), the
accuracy at one fixed byte budget as its bases go from 4 to 2 to 1 byte per value, i.e.
what spending the same bytes on more, coarser values buys. Inputs are result files of
`bench/accuracy.py`; records repeated across files are deduplicated as in
`bench/plot_accuracy.py` (the one with the most models is kept).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import STORAGES, draw_arms, pooled  # noqa: E402
from plot_accuracy import keep_largest, markdown  # noqa: E402

BYTES_PER_VALUE = {"": 4, "-f16": 2, "-u8": 1}


def storage_lines(rows: list[dict[str, Any]], ipc: int) -> dict[str, list[tuple]]:
    """storage -> [(bytes per value, mean, std)] at one IPC, for the arms that ran."""
    by_arm = {r["arm"]: r for r in rows if r["ipc"] == ipc}
    lines: dict[str, list[tuple]] = {}
    for storage in STORAGES:
        points = [
            (
                size,
                by_arm[storage + suffix]["accuracy_mean"],
                by_arm[storage + suffix]["accuracy_std"],
            )
            for suffix, size in BYTES_PER_VALUE.items()
            if storage + suffix in by_arm
        ]
        if points:
            lines[storage] = sorted(points)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+", help="JSON files of bench/accuracy.py")
    parser.add_argument("-o", "--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--ipc", type=int, default=1, help="the budget of the right panel")
    args = parser.parse_args()
    records = []
    for path in args.results:
        records += json.loads(path.read_text())["results"]
    records = keep_largest([r for r in records if r["arm"] != "full"])
    rows = pooled(records)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    # twelve arms: the default colour cycle repeats after ten
    by_name = sorted(records, key=lambda r: r["arm"])
    draw_arms(left, by_name, colours=plt.get_cmap("tab20").colors)
    left.set_title("accuracy vs true bytes (IPC 1 and 10 budgets)", fontsize=10)
    for storage, points in storage_lines(rows, args.ipc).items():
        xs, ys, es = zip(*points)
        right.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=STORAGES[storage][1])
    right.set_xscale("log", base=2)
    right.set_xticks([1, 2, 4], ["uint8 (1)", "float16 (2)", "float32 (4)"])
    right.invert_xaxis()
    right.set_xlabel("bytes per stored value of the bases")
    right.set_title(f"one budget (IPC {args.ipc}): the same bytes at lower precision", fontsize=10)
    right.grid(alpha=0.3)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    print(markdown(records))


if __name__ == "__main__":
    main()
