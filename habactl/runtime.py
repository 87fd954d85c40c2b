"""Where a run computes and where its random numbers come from, for every command.

Every random draw of distillation and expert training comes from an explicit CPU
``torch.Generator`` derived here from the run's seed and a purpose, never from the
global RNG: a seed then gives the same numbers on any device, and a generator's state
can be saved in a checkpoint and restored on resume.
"""

from __future__ import annotations

import hashlib

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


def derived_generator(domain: str, seed: int, purpose: object) -> torch.Generator:
    """An independent CPU generator for one ``purpose`` of a run seeded with ``seed``.

    The seed of the generator is the first 63 bits of sha256("habactl-{domain}:{seed}:
    {purpose}"): streams of different purposes (or domains) do not overlap, and the
    derivation never changes, so archives and expert buffers rebuild byte for byte.
    """
    digest = hashlib.sha256(f"habactl-{domain}:{int(seed)}:{purpose}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


__all__ = ["DEVICES", "derived_generator", "resolve_device"]
