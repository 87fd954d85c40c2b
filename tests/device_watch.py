"""Watching the device path in tests: an iteration on PyTorch's ``meta`` device, the
ops that mix host tensors into it, and the tensors an iteration computes with
(used by tests/test_device_path.py and the objectives' own device-path tests)."""

from __future__ import annotations

import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from habactl.distill import Distiller
from habactl.runtime import device as runtime

META = torch.device("meta")


class HostTensorWatch(TorchDispatchMode):
    """Records ops that mix a host tensor of one or more dimensions with a meta tensor,
    and copies into the device made anywhere but inside ``runtime.to_device``."""

    def __init__(self, armed: bool = True) -> None:
        super().__init__()
        self.stray: list[str] = []
        self.armed = armed  # off while a test sets things up (moving them in once is fine)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        to_meta = kwargs.get("device") == META or any(t.device == META for t in tensors)
        host = [t for t in tensors if t.device.type == "cpu" and t.dim() > 0]
        if self.armed and to_meta and host and not _inside(runtime.to_device):
            self.stray.append(f"{func} at {_caller()}")
        return func(*args, **kwargs)


def _inside(function) -> bool:
    frame = sys._getframe()
    while frame is not None:
        if frame.f_code is function.__code__:
            return True
        frame = frame.f_back
    return False


def _caller() -> str:
    """The innermost habactl frame: where a stray tensor came from."""
    frame = sys._getframe()
    while frame is not None:
        name = frame.f_code.co_filename
        if "/habactl/" in name and "/tests/" not in name:
            return f"{name.rsplit('/habactl/', 1)[1]}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"


def device_tensors(distiller: Distiller) -> dict[str, torch.Tensor]:
    """Everything an iteration computes with, by name."""
    held = {
        "real images": distiller.real.images,
        "real labels": distiller.real.labels,
        "bases": distiller.synthetic.bases,
        "synthetic labels": distiller.synthetic.labels,
        **{f"pipeline {k}": v for k, v in distiller.synthetic.pipeline.named_tensors().items()},
    }
    net = getattr(distiller.objective, "net", None)
    if net is not None:
        held.update({f"objective net {k}": v for k, v in net.state_dict().items()})
    if distiller.contrast is not None:
        held.update({f"extractor {k}": v for k, v in distiller.contrast.net.state_dict().items()})
    if hasattr(distiller.objective, "syn_lr"):
        held["learned lr"] = distiller.objective.syn_lr
    if hasattr(distiller.objective, "raw_lrs"):  # dd: learned per-step lrs, and labels
        held["learned lrs"] = distiller.objective.raw_lrs
        if distiller.objective.label_logits is not None:
            held["learned labels"] = distiller.objective.label_logits
    return held
