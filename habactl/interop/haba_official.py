"""The HaBa authors' output: ``images_best.pt`` (bases) + ``weights_best.pt`` (hallucinators).

``images_best.pt`` is (N, C, H, W), class-major with N / classes bases per class (no
labels file: the code builds them as ``arange(classes)`` repeated). ``weights_best.pt``
is the state dict of an ``nn.ModuleList`` of K hallucinators, each
``enc`` = Conv2d(C, h, k) -> ``scale * z + shift`` with scale/shift of shape
(1, h, H-k+1, W-k+1) -> ``dec`` = ConvTranspose2d(h, C, k), no activation: keys
``{k}.enc.weight``, ``{k}.enc.bias``, ``{k}.scale``, ``{k}.shift``, ``{k}.dec.weight``,
``{k}.dec.bias``. That is exactly habactl's ``hallucinate`` stage with
``arch: pixel-affine`` (codecs/hallucinate.md): the tensors are stacked over k.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from habactl.interop.common import Imported, InteropError, Options, as_images, balanced_labels
from habactl.interop.safe_load import load_torch

_KEY_RE = re.compile(r"(\d+)\.(enc\.weight|enc\.bias|scale|shift|dec\.weight|dec\.bias)")
_OURS = {
    "enc.weight": "encoder.weight",
    "enc.bias": "encoder.bias",
    "scale": "scale",
    "shift": "shift",
    "dec.weight": "decoder.weight",
    "dec.bias": "decoder.bias",
}


def _split(files: list[Path]) -> tuple[Path, Path]:
    if len(files) == 1 and files[0].is_dir():
        files = [files[0] / "images_best.pt", files[0] / "weights_best.pt"]
    images = [p for p in files if "image" in p.stem.lower()]
    weights = [p for p in files if p not in images]
    if len(images) != 1 or len(weights) != 1:
        raise InteropError(
            "haba-official: expected images_best.pt and weights_best.pt "
            "(or the folder holding them)"
        )
    return images[0], weights[0]


def hallucinators(
    state: object, in_shape: tuple[int, int, int], name: str
) -> tuple[dict, dict[str, Tensor]]:
    """(stage entry, stacked parameters) of the authors' state dict, checked exactly."""
    if not isinstance(state, dict) or not state:
        raise InteropError(f"{name}: expected the state dict of the hallucinators")
    per: dict[int, dict[str, Tensor]] = {}
    for key, value in state.items():
        match = _KEY_RE.fullmatch(str(key))
        if match is None or not isinstance(value, Tensor):
            raise InteropError(
                f"{name}: unexpected entry {str(key)[:60]!r} (expected "
                "{k}.enc.*, {k}.scale, {k}.shift, {k}.dec.*)"
            )
        per.setdefault(int(match.group(1)), {})[match.group(2)] = value.detach().to(torch.float32)
    count = len(per)
    if sorted(per) != list(range(count)):
        raise InteropError(f"{name}: hallucinator indices {sorted(per)} are not 0..{count - 1}")
    c, h, w = in_shape
    first = per[0]
    if set(first) != set(_OURS):
        raise InteropError(f"{name}: hallucinator 0 lacks {sorted(set(_OURS) - set(first))}")
    hidden, c_in, k, k2 = first["enc.weight"].shape
    if c_in != c or k != k2:
        raise InteropError(
            f"{name}: encoder weight {list(first['enc.weight'].shape)} does not "
            f"fit {c}-channel bases"
        )
    c_out = first["dec.weight"].shape[1]
    if c_out != c:
        raise InteropError(
            f"{name}: the hallucinators map {c} to {c_out} channels (the "
            "single-channel variant); habactl's stage keeps the channel count"
        )
    inner = (h - k + 1, w - k + 1)
    expected = {
        "enc.weight": (hidden, c, k, k),
        "enc.bias": (hidden,),
        "scale": (1, hidden, *inner),
        "shift": (1, hidden, *inner),
        "dec.weight": (hidden, c, k, k),
        "dec.bias": (c,),
    }
    for index in range(count):
        for part, shape in expected.items():
            tensor = per[index].get(part)
            if tensor is None or tuple(tensor.shape) != shape:
                found = None if tensor is None else list(tensor.shape)
                raise InteropError(
                    f"{name}: {index}.{part} is {found}, expected {list(shape)} "
                    f"for {c}x{h}x{w} bases"
                )
    stacked = {}
    for part, ours in _OURS.items():
        values = torch.stack([per[i][part] for i in range(count)])
        if part in ("scale", "shift"):
            values = values[:, 0]  # (K, 1, h, H', W') -> (K, h, H', W')
        stacked[ours] = values.contiguous()
    entry = {
        "name": "hallucinate",
        "version": 1,
        "configuration": {
            "arch": "pixel-affine",
            "count": count,
            "hidden": int(hidden),
            "kernel": int(k),
        },
    }
    return entry, stacked


def read(files: list[Path], options: Options) -> Imported:
    images_path, weights_path = _split(files)
    bases = as_images(load_torch(images_path), images_path.name)
    if options.classes is None:
        raise InteropError("haba-official: the files store no labels; give --dataset or --classes")
    labels = balanced_labels(bases.shape[0], len(options.classes), images_path.name)
    c, h, w = (int(d) for d in bases.shape[1:])
    entry, params = hallucinators(load_torch(weights_path), (c, h, w), weights_path.name)
    stage_tensors = {f"pipeline.0.{name}": value for name, value in params.items()}
    notes = [
        f"{entry['configuration']['count']} pixel-affine hallucinators; the authors' "
        "claim counts bases only"
    ]
    return Imported(
        bases=bases,
        labels=labels,
        space="normalised",
        pipeline=[entry],
        stage_tensors=stage_tensors,
        counts="bases",
        notes=notes,
    )
