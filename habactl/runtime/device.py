"""Where a run computes and where its random numbers come from, for every command.

Every random draw of distillation and expert training comes from an explicit CPU
``torch.Generator`` derived here from the run's seed and a purpose, never from the
global RNG: a seed then gives the same numbers on any device, and a generator's state
can be saved in a checkpoint and restored on resume.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch

from habactl.errors import HabaError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when one is available, else the CPU; ``cuda`` without one is an error."""
    if name not in DEVICES:
        raise HabaError(f"unknown device {name!r} (known: {', '.join(DEVICES)})")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise HabaError(
                "--device cuda: no CUDA device is available here; use --device cpu or auto"
            )
        return torch.device("cuda")
    return torch.device("cpu")


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` (on the host) on ``device`` without making the host wait for the device.

    A plain ``.to("cuda")`` of a host tensor waits until the GPU has finished everything
    queued before it (PyTorch synchronises the stream after a blocking copy, and CUDA may
    for pageable memory too); the small index, label and parameter tensors the inner loops
    move every iteration need no such wait. They go through pinned memory with a
    non-blocking copy: the caching host allocator keeps the pinned copy alive until the
    transfer is done. Elsewhere (CPU, or already there) this is ``tensor.to(device)``.
    Device-to-host reads must wait, and do not come here.
    """
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def host_values(values: Mapping[str, float | torch.Tensor]) -> dict[str, float]:
    """Numbers as floats, every tensor among them (a loss, device-side metrics) read in
    one transfer: a loop that reports several numbers waits for its device once, not once
    per number. Read in float64, so each value is exactly ``float(tensor)``."""
    tensors = {k: v for k, v in values.items() if isinstance(v, torch.Tensor)}
    read: dict[str, float] = {}
    if tensors:
        stacked = torch.stack([t.detach().reshape(()).double() for t in tensors.values()])
        read = dict(zip(tensors, stacked.tolist()))
    return {k: read[k] if k in read else float(v) for k, v in values.items()}


def derived_generator(domain: str, seed: int, purpose: object) -> torch.Generator:
    """An independent CPU generator for one ``purpose`` of a run seeded with ``seed``.

    The seed of the generator is the first 63 bits of sha256("habactl-{domain}:{seed}:
    {purpose}"): streams of different purposes (or domains) do not overlap, and the
    derivation never changes, so archives and expert buffers rebuild byte for byte.
    """
    digest = hashlib.sha256(f"habactl-{domain}:{int(seed)}:{purpose}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


__all__ = ["DEVICES", "derived_generator", "host_values", "resolve_device", "to_device"]
