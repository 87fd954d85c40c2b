"""Peak memory of one MTT iteration: 1x28x28 (mnist-5k), IPC 10, syn_steps 20.

    python bench/mtt_memory.py                       # trains a 1-expert, 2-epoch buffer first
    python bench/mtt_memory.py --experts buffer/     # or uses a buffer of mnist-5k

Each case runs in its own process and prints the process's peak RSS before the
iteration (data, networks, buffer) and after it, seconds for the iteration, and the
machine. It should stay under 8 GiB for `unroll recompute` (the default). `unroll full`
(the whole unrolled graph kept) is run with fewer steps, to show what it costs per step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = [  # codec, ipc, syn_steps, unroll
    ("raw", 10, 20, "recompute"),
    ("haba+idc", 10, 20, "recompute"),
    ("raw", 10, 2, "full"),
    ("raw", 10, 4, "full"),
]


def machine() -> str:
    import torch

    model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{model}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, python {platform.python_version()}"
    )


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def one_case(experts: str, codec: str, ipc: int, steps: int, unroll: str) -> dict:
    from habactl.data import load_source
    from habactl.distill import DistillConfig, Distiller

    source = load_source("mnist-5k")
    config = DistillConfig(
        objective="mtt",
        codec=codec,
        ipc=ipc,
        iterations=0,
        contrastive=False,
        lr_bases=100.0,
        objective_settings={"experts": experts, "syn_steps": steps, "unroll": unroll},
    )
    distiller = Distiller(source, config)
    before = peak_gib()
    started = time.perf_counter()
    record = distiller.step()
    seconds = time.perf_counter() - started
    return {
        "codec": codec,
        "ipc": ipc,
        "syn_steps": steps,
        "unroll": unroll,
        "images_per_step": distiller.synthetic.bases.shape[0],
        "peak_rss_before_gib": round(before, 2),
        "peak_rss_gib": round(peak_gib(), 2),
        "seconds": round(seconds, 1),
        "loss": round(record["loss"], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--experts", help="an experts buffer of mnist-5k (default: train a tiny one)"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's default)"
    )
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.case:
        codec, ipc, steps, unroll = args.case.split(":")
        print(json.dumps(one_case(args.experts, codec, int(ipc), int(steps), unroll)))
        return
    print(f"machine: {machine()}", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        experts = args.experts
        if experts is None:
            from habactl.data import load_source
            from habactl.experts import ExpertSettings, train_experts

            experts = str(Path(folder) / "buffer")
            started = time.perf_counter()
            train_experts(load_source("mnist-5k"), experts, ExpertSettings(experts=1, epochs=2))
            print(
                f"trained a 1-expert, 2-epoch buffer in {time.perf_counter() - started:.0f} s",
                flush=True,
            )
        for codec, ipc, steps, unroll in CASES:
            result = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--experts",
                    experts,
                    "--threads",
                    str(args.threads),
                    "--case",
                    f"{codec}:{ipc}:{steps}:{unroll}",
                ],
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                print(f"{codec} ipc {ipc} steps {steps} {unroll}: failed\n{result.stderr[-2000:]}")
                continue
            r = json.loads(result.stdout.strip().splitlines()[-1])
            print(
                f"1x28x28 {r['codec']:<9} IPC {r['ipc']:<3} syn_steps {r['syn_steps']:<3} "
                f"unroll {r['unroll']:<9} {r['images_per_step']:>4} images/step: peak RSS "
                f"{r['peak_rss_gib']:.2f} GiB "
                f"(before the iteration {r['peak_rss_before_gib']:.2f}), "
                f"{r['seconds']:.1f} s/iteration",
                flush=True,
            )


if __name__ == "__main__":
    main()
