"""Seconds per iteration of each objective, raw vs HaBa, 1x28x28 (mnist-5k), IPC 1.

    python bench/objectives.py --threads 1   # trains a 1-expert buffer for mtt first
    python bench/objectives.py --experts buffer/ --iterations 5

Settings are each objective's CLI defaults: dm and dc/dsa with 64 real images per class
(at IPC 1 gradient matching uses one match per network, no inner loop), mtt with 20
student steps over all bases. HaBa is `haba+idc` (at IPC 1 full-resolution bases plus
hallucinators do not fit the true budget) with 5 channel-affine hallucinators; the
contrastive term is left out so that the objectives alone are timed. Prints the median
of the timed iterations after one warm-up iteration, and the machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

OBJECTIVES = ("dm", "dc", "dsa", "mtt")
CODECS = ("raw", "haba+idc")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--experts", help="an experts buffer of mnist-5k (default: train a tiny one)"
    )
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations per case")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's default)"
    )
    parser.add_argument("--objectives", default=",".join(OBJECTIVES))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from mtt_memory import machine

    from habactl.data import load_source
    from habactl.distill import DistillConfig, Distiller
    from habactl.distill.objectives import get_objective

    print(f"machine: {machine()}", flush=True)
    source = load_source("mnist-5k")
    with tempfile.TemporaryDirectory() as folder:
        experts = args.experts
        objectives = args.objectives.split(",")
        if "mtt" in objectives and experts is None:
            from habactl.experts import ExpertSettings, train_experts

            experts = str(Path(folder) / "buffer")
            started = time.perf_counter()
            train_experts(source, experts, ExpertSettings(experts=1, epochs=2))
            print(
                f"trained a 1-expert, 2-epoch buffer in {time.perf_counter() - started:.0f} s",
                flush=True,
            )
        for objective in objectives:
            engine = getattr(get_objective(objective), "engine_defaults", {})
            for codec in CODECS:
                settings = {"experts": experts} if objective == "mtt" else {"real_per_class": 64}
                config = DistillConfig(
                    **{
                        **engine,
                        "objective": objective,
                        "codec": codec,
                        "ipc": 1,
                        "iterations": 0,
                        "contrastive": False,
                        "objective_settings": settings,
                    }
                )
                distiller = Distiller(source, config)
                distiller.step()  # warm-up
                times = []
                for _ in range(args.iterations):
                    started = time.perf_counter()
                    distiller.step()
                    times.append(time.perf_counter() - started)
                images = distiller.synthetic.bases.shape[0] * distiller.synthetic.expansion
                print(
                    f"{objective:<4} {codec:<9} {images:>4} synthetic images: "
                    f"{statistics.median(times):6.2f} s/iteration",
                    flush=True,
                )


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    main()
