"""One evaluation training step (ConvNet-3 forward + backward + SGD), whole batch vs chunks.

    python bench/train_step.py [--images 190] [--threads 1] [--repeats 5]

`habactl evaluate` trains on a CPU in chunks of 16 images with the gradient accumulated
(habactl/evaluation/train.py); this prints seconds per step for the whole batch and for
chunks of 64, 32, 16 and 8, measured interleaved so that load on a shared machine hits all
alike, and the ratio to the whole batch.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=190, help="batch (190: the default archive)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from habactl.evaluation.train import backward_in_chunks
    from habactl.nets import build_net

    torch.manual_seed(0)
    net = build_net("convnet", 1, 28, 28, 10)
    images = torch.randn(args.images, 1, 28, 28)
    labels = torch.randint(0, 10, (args.images,))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def step(chunk: int | None) -> float:
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        backward_in_chunks(net, images, labels, chunk)
        optimizer.step()
        return time.perf_counter() - started

    chunks = [None, 64, 32, 16, 8]
    for chunk in chunks:
        step(chunk)  # warm-up
    times: dict[int | None, list[float]] = {chunk: [] for chunk in chunks}
    for _ in range(args.repeats):
        for chunk in chunks:
            times[chunk].append(step(chunk))
    print(
        f"machine: {platform.machine()} · {os.cpu_count()} CPUs · torch {torch.__version__} · "
        f"{args.threads} thread(s); ConvNet-3, 1x28x28, batch {args.images}, best of {args.repeats}"
    )
    whole = min(times[None])
    for chunk in chunks:
        best = min(times[chunk])
        print(
            f"  {'whole batch' if chunk is None else f'chunks of {chunk}':<14} {best:6.3f} s/step"
            f"   {whole / best:4.2f}x the whole batch's speed"
        )


if __name__ == "__main__":
    main()
