"""One accuracy-vs-stored-values plot from several `bench/accuracy.py` result files.

    python bench/plot_accuracy.py bench/results/accuracy.json bench/results/accuracy-ipc10.json \
        -o bench/results/accuracy-all.png

Runs at different IPCs may use different evaluation settings (the IPC-10 run here used
fewer epochs and models to fit the CPU); the title names each file's settings.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import plot  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "results", type=Path, nargs="+", help="JSON files written by bench/accuracy.py"
    )
    parser.add_argument("-o", "--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--arms", help="comma list of arms to show (default: all)")
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
    plot(results, args.out, note="evaluation — " + "; ".join(notes))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
