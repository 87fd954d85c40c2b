"""Decode throughput of the hallucinate stage (images/s), forward without grad.

Run: python codecs/bench_decode.py [--threads N]
Reports the best of several repeats: the CPU may be shared, and the best run is the
one least disturbed by other processes.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from habactl.codecs import get_stage


def rate(fn, items: int, repeats: int = 7, calls: int = 20) -> float:
    fn()  # warm-up: first calls pay for allocation and kernel selection
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return items / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    n = args.batch
    for arch, shape in (("channel-affine", (1, 28, 28)), ("pixel-affine", (1, 28, 28)),
                        ("pixel-affine", (3, 32, 32))):
        stage = get_stage("hallucinate").from_config({"arch": arch, "count": 5}, shape,
                                                     generator=torch.Generator().manual_seed(0), noise=0.1)
        x = torch.randn(n, *shape)
        variant = torch.randint(5, (n,), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            one = rate(lambda: stage(x, variant), n)
            every = rate(lambda: stage.forward_all(x), n * 5)
        print(f"{arch:15s} {'x'.join(map(str, shape)):8s} K=5 batch {n}: "
              f"forward {one:9,.0f} img/s   forward_all {every:9,.0f} img/s")


if __name__ == "__main__":
    main()
