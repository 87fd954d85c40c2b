"""Regenerate the codec test vectors in this folder (run from anywhere).

    python codecs/vectors/make_vectors.py [OUT_DIR]

Every value is a small multiple of 1/8 drawn from a fixed integer generator (no RNG
library), chosen so that float32 arithmetic on them is exact: any correct
implementation, summing in any order, reproduces the expected outputs bit for bit.
The expected outputs come from the plain float64 reference below, written from the
spec pages (not from habactl), and habactl's float32 result must equal them exactly.

Each file is plain safetensors with one metadata key, "stage": the pipeline entry
{"name", "version", "configuration"} as canonical JSON (one key, so the bytes are
reproducible). Tensors: "input" (N, C, H, W) F32 (quantize: the stored bases, U8, F16
or BF16, uint4 packed to (N, C, H, ceil(W/2))); "output" F32; quantize files add "scale" and
"zero_point" for the integer dtypes; frequency files add "mask" U8 and, for a per-class
mask, "classes" (N,) I64 (each input's class); hallucinate files add
"variant" (N,) I64, "output_all" (N*K, C, H, W) F32 (item b*K + v) and the stage
parameters under their own names ("encoder.weight", ...).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


class Dyadic:
    """A 31-bit LCG (the classic ANSI C constants) mapped to multiples of 1/8."""

    def __init__(self, seed: int) -> None:
        self.state = seed

    def take(self, shape: tuple[int, ...], low: float = -1.0, high: float = 1.0) -> np.ndarray:
        steps = round((high - low) * 8)
        out = []
        for _ in range(math.prod(shape)):
            self.state = (1103515245 * self.state + 12345) % 2**31
            out.append(low + ((self.state >> 16) % (steps + 1)) / 8)
        return np.array(out, dtype=np.float64).reshape(shape)


# -- references, straight from codecs/upsample.md and codecs/hallucinate.md ----------
def _cubic(d: float, a: float = -0.75) -> float:
    d = abs(d)
    if d <= 1:
        return ((a + 2) * d - (a + 3)) * d * d + 1
    if d < 2:
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return 0.0


def _taps(mode: str, i: int, size: int, f: int) -> list[tuple[int, float]]:
    """(source index, weight) pairs for output index i along one axis."""
    if mode == "nearest":
        return [(i // f, 1.0)]
    src = (i + 0.5) / f - 0.5
    if mode == "bilinear":
        src = max(src, 0.0)
        i0 = math.floor(src)
        lam = src - i0
        return [(i0, 1 - lam), (min(i0 + 1, size - 1), lam)]
    i0 = math.floor(src)
    t = src - i0
    return [(min(max(i0 + m, 0), size - 1), _cubic(t - m)) for m in (-1, 0, 1, 2)]


def upsample_reference(x: np.ndarray, factor: int, mode: str) -> np.ndarray:
    n, c, h, w = x.shape
    y = np.zeros((n, c, h * factor, w * factor))
    for r in range(h * factor):
        for s in range(w * factor):
            for ri, wr in _taps(mode, r, h, factor):
                for si, ws in _taps(mode, s, w, factor):
                    y[:, :, r, s] += wr * ws * x[:, :, ri, si]
    return y


def hallucinate_reference(x: np.ndarray, p: dict[str, np.ndarray], v: int) -> np.ndarray:
    """One sample (C, H, W) through hallucinator v, by the spec's sums."""
    c, h, w = x.shape
    ew, eb, dw, db = p["encoder.weight"][v], p["encoder.bias"][v], p["decoder.weight"][v], p["decoder.bias"][v]
    hidden, k = ew.shape[0], ew.shape[-1]
    z = np.zeros((hidden, h - k + 1, w - k + 1))
    for j in range(hidden):
        for r in range(h - k + 1):
            for s in range(w - k + 1):
                z[j, r, s] = eb[j] + np.sum(ew[j] * x[:, r:r + k, s:s + k])
    u = z * p["scale"][v] + p["shift"][v]  # (hidden, 1, 1) broadcasts per channel
    y = np.zeros((c, h, w)) + db[:, None, None]
    for j in range(hidden):
        for r in range(h - k + 1):
            for s in range(w - k + 1):
                y[:, r:r + k, s:s + k] += dw[j] * u[j, r, s]  # scatter: the transposed conv
    return y


def quantize_reference(stored: np.ndarray, config: dict, width: int, p: dict) -> np.ndarray:
    """Stored bases -> float values, by codecs/quantize.md: unpack uint4 (low nibble
    first), then (code - zero_point[c]) * scale[c]; float16 is read as it is, bfloat16
    (kept here as its uint16 bits) is the top half of a float32's bits."""
    if config["dtype"] == "float16":
        return stored.astype(np.float64)
    if config["dtype"] == "bfloat16":
        return (stored.astype(np.uint32) << np.uint32(16)).view(np.float32).astype(np.float64)
    codes = stored.astype(np.int64)
    if config["dtype"] == "uint4":
        pairs = np.stack([codes & 15, codes >> 4], axis=-1)
        codes = pairs.reshape(*codes.shape[:-1], -1)[..., :width]
    c = codes.shape[1]
    scale = np.broadcast_to(p["scale"], (c,)).reshape(1, c, 1, 1)
    zero = np.broadcast_to(p["zero_point"], (c,)).reshape(1, c, 1, 1)
    return (codes - zero) * scale


def frequency_reference(x: np.ndarray, mask: np.ndarray, classes=None) -> np.ndarray:
    """Coefficients (N, C, 1, K) -> images, by codecs/frequency.md: place them at the
    mask's ones in row-major order, then the orthonormal inverse DCT as explicit sums.
    A per-class mask (classes, C, H, W) decodes basis b through mask[classes[b]]."""
    n, c, _, _ = x.shape
    h, w = mask.shape[-2:]
    masks = [mask] * n if classes is None else [mask[k] for k in classes]

    def basis(size: int) -> np.ndarray:  # a[k, i] = alpha_k cos(pi (2i + 1) k / 2 size)
        a = np.array([[math.cos(math.pi * (2 * i + 1) * k / (2 * size)) for i in range(size)]
                      for k in range(size)]) * math.sqrt(2 / size)
        a[0] /= math.sqrt(2)
        return a

    rows, cols = basis(h), basis(w)
    y = np.zeros((n, c, h, w))
    for ch in range(c):
        for b in range(n):
            where = [(r, q) for r in range(h) for q in range(w) if masks[b][ch, r, q]]
            for j, (u, v) in enumerate(where):
                y[b, ch] += x[b, ch, 0, j] * np.outer(rows[u], cols[v])
    return y


# -- the cases -----------------------------------------------------------------------
UPSAMPLE = {  # case -> (configuration, input shape)
    "bilinear": ({"factor": 2, "mode": "bilinear"}, (2, 1, 3, 4)),
    "nearest": ({"factor": 3, "mode": "nearest"}, (2, 2, 2, 3)),
    "bicubic": ({"factor": 2, "mode": "bicubic"}, (2, 1, 4, 3)),
}
QUANTIZE = {  # case -> (configuration, logical input shape (N, C, H, W))
    "uint8-channel": ({"dtype": "uint8", "granularity": "channel"}, (2, 3, 2, 3)),
    "uint4-tensor": ({"dtype": "uint4", "granularity": "tensor"}, (2, 1, 3, 5)),  # odd width
    "float16": ({"dtype": "float16", "granularity": "tensor"}, (2, 2, 3, 3)),
    "bfloat16": ({"dtype": "bfloat16", "granularity": "tensor"}, (2, 2, 3, 4)),
}
FREQUENCY = {  # case -> (configuration, channels, N)
    "5x7-keep9": ({"height": 5, "width": 7, "keep": 9}, 2, 3),
    "4x4-keep16": ({"height": 4, "width": 4, "keep": 16}, 1, 2),  # every coefficient kept
    # one mask per class (3 classes), bases of classes 2, 0, 2, 1: "classes" says which
    "4x5-keep6-per-class": (
        {"classes": 3, "height": 4, "keep": 6, "mask": "per-class", "width": 5}, 2, 4),
}
HALLUCINATE = {
    "pixel-affine": ({"arch": "pixel-affine", "count": 2, "hidden": 2, "kernel": 3}, (2, 1, 6, 6)),
    "channel-affine": ({"arch": "channel-affine", "count": 2, "hidden": 3, "kernel": 3}, (2, 3, 5, 5)),
}


def _exact32(a: np.ndarray, what: str) -> np.ndarray:
    b = a.astype(np.float32)
    if not np.array_equal(b.astype(np.float64), a):
        raise AssertionError(f"{what}: reference is not exact in float32; pick smaller values")
    return b


def build_cases() -> dict[str, tuple[dict, dict[str, np.ndarray]]]:
    """File stem -> (pipeline entry, tensors), with the expected outputs filled in."""
    from habactl.codecs.hallucinate import Hallucinate
    from habactl.codecs.registry import describe_entry

    cases = {}
    for seed, (case, (config, shape)) in enumerate(UPSAMPLE.items(), start=1):
        x = Dyadic(seed).take(shape)
        y = upsample_reference(x, config["factor"], config["mode"])
        cases[f"upsample-{case}"] = ({"name": "upsample", "version": 1, "configuration": config},
                                     {"input": x, "output": y})
    for seed, (case, (config, shape)) in enumerate(HALLUCINATE.items(), start=11):
        n, rng = shape[0], Dyadic(seed)
        spec = describe_entry({"name": "hallucinate", "version": 1, "configuration": config}, shape[1:])
        x = rng.take(shape)
        params = {}
        for name in sorted(spec.params):
            low, high = (0.5, 1.5) if name == "scale" else (-1.0, 1.0)
            params[name] = rng.take(spec.params[name], low, high)
        variant = np.array([1, 0][:n], dtype=np.int64)
        count = spec.expansion
        y = np.stack([hallucinate_reference(x[b], params, int(variant[b])) for b in range(n)])
        y_all = np.stack([hallucinate_reference(x[b], params, v) for b in range(n) for v in range(count)])
        assert Hallucinate.name == spec.name
        cases[f"hallucinate-{case}"] = (
            {"name": "hallucinate", "version": 1, "configuration": config},
            {"input": x, "variant": variant, "output": y, "output_all": y_all, **params})
    for seed, (case, (config, shape)) in enumerate(QUANTIZE.items(), start=21):
        rng, (n, c, h, w) = Dyadic(seed), shape
        if config["dtype"] == "float16":
            stored = rng.take(shape, -4.0, 4.0).astype(np.float16)
            params: dict[str, np.ndarray] = {}
        elif config["dtype"] == "bfloat16":
            # Values of few significant bits (exact in bfloat16), spread over float32's
            # range (2^-100 .. 2^100: far beyond float16's), kept as their bits.
            scale = np.array([2.0 ** e for e in (-100, 0, 60, 100)]).reshape(1, 1, 1, 4)
            values = (rng.take(shape, -4.0, 4.0) * scale).astype(np.float32)
            stored = (values.view(np.uint32) >> np.uint32(16)).astype(np.uint16)
            assert np.array_equal(quantize_reference(stored, config, w, {}), values)
            params = {}
        else:
            levels = 256 if config["dtype"] == "uint8" else 16
            codes = (rng.take(shape, 0.0, (levels - 1) / 8) * 8).astype(np.uint8)
            k = c if config["granularity"] == "channel" else 1
            params = {"scale": rng.take((k,), 0.125, 1.0), "zero_point": rng.take((k,), 0, 1) * 8}
            stored = codes
            if config["dtype"] == "uint4":
                padded = np.pad(codes, [(0, 0)] * 3 + [(0, w % 2)])
                stored = (padded[..., 0::2] | (padded[..., 1::2] << 4)).astype(np.uint8)
        y = quantize_reference(stored, config, w, params)
        cases[f"quantize-{case}"] = (
            {"name": "quantize", "version": 1, "configuration": config},
            {"input": stored, "output": y, **params})
    for seed, (case, (config, c, n)) in enumerate(FREQUENCY.items(), start=31):
        rng, (h, w, k) = Dyadic(seed), (config["height"], config["width"], config["keep"])
        x = rng.take((n, c, 1, k), -2.0, 2.0)
        masks = config.get("classes", 1)
        mask = np.zeros((masks, c, h * w), dtype=np.uint8)
        for m in range(masks):
            for ch in range(c):  # a different, scattered choice per channel (and class)
                order = sorted(range(h * w),
                               key=lambda i, ch=ch, m=m: ((i * 7 + ch * 3 + m * 5) % (h * w), i))
                mask[m, ch, order[:k]] = 1
        if "classes" not in config:
            mask = mask.reshape(c, h, w)
            extra, classes = {}, None
        else:
            mask = mask.reshape(masks, c, h, w)
            classes = np.array([2, 0, 2, 1][:n], dtype=np.int64)
            extra = {"classes": classes}
        cases[f"frequency-{case}"] = (
            {"name": "frequency", "version": 1, "configuration": config},
            {"input": x, "output": frequency_reference(x, mask, classes), "mask": mask,
             **extra})
    return cases


def decode_with_habactl(entry: dict, tensors: dict) -> dict:
    """habactl's outputs for a vector file's content (used by the generator and the tests)."""
    import torch

    from habactl.codecs import get_stage

    stored = np.asarray(tensors["input"])
    narrow = stored.dtype in (np.uint8, np.float16)
    x = torch.as_tensor(stored if narrow else stored.astype(np.float32))
    if stored.dtype == np.uint16:  # bfloat16 bits (numpy has no bfloat16)
        x = torch.from_numpy(stored.copy()).view(torch.bfloat16)
    # A quantize stage may store its input packed: its shape is the output's.
    shape = tensors["output"].shape[1:] if entry["name"] == "quantize" else x.shape[1:]
    # (frequency's input shape is (C, 1, keep): the stored coefficients themselves)
    stage = get_stage(entry["name"]).from_config(entry["configuration"], tuple(shape))
    stage.load_tensors({k: torch.as_tensor(v) for k, v in tensors.items()
                        if k in stage.spec.params})
    out = {}
    with torch.no_grad():
        if stage.per_class:
            out["output"] = stage(x, None, classes=torch.as_tensor(tensors["classes"])).numpy()
        elif stage.expansion > 1:
            out["output"] = stage(x, torch.as_tensor(tensors["variant"])).numpy()
        else:
            out["output"] = stage(x).numpy()
        if "output_all" in tensors:
            out["output_all"] = stage.forward_all(x).numpy()
    return out


def _save_bfloat16(tensors: dict[str, np.ndarray], path: Path, meta: dict[str, str]) -> None:
    """Save through torch, uint16 arrays as the BF16 they hold (numpy has no bfloat16)."""
    import torch
    from safetensors.torch import save_file as save_torch

    out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}
    out = {k: t.view(torch.bfloat16) if t.dtype == torch.uint16 else t for k, t in out.items()}
    save_torch(out, str(path), metadata=meta)


def main(out_dir: Path = HERE) -> list[Path]:
    from safetensors.numpy import save_file

    written = []
    for stem, (entry, tensors) in build_cases().items():
        # The DCT's cosines are not dyadic: frequency outputs are float32 of the float64
        # reference, and habactl must agree within float32 rounding (1e-6), not bit for bit.
        inexact = entry["name"] == "frequency"
        stored = {k: v if v.dtype in (np.int64, np.uint8, np.float16, np.uint16)
                  else v.astype(np.float32) if inexact and k == "output"
                  else _exact32(v, f"{stem}:{k}")
                  for k, v in tensors.items()}
        for key, got in decode_with_habactl(entry, stored).items():
            tolerance = 1e-6 if inexact else 0.0
            if not np.allclose(got, stored[key], rtol=0, atol=tolerance):
                diff = float(np.abs(got - stored[key]).max())
                raise AssertionError(f"{stem}: habactl's {key} differs from the reference by {diff}")
        path = Path(out_dir) / f"{stem}.safetensors"
        meta = {"stage": json.dumps(entry, sort_keys=True, separators=(",", ":"))}
        if any(v.dtype == np.uint16 for v in stored.values()):
            _save_bfloat16(stored, path, meta)
        else:
            save_file({k: np.ascontiguousarray(v) for k, v in stored.items()}, str(path), metadata=meta)
        written.append(path)
    return written


if __name__ == "__main__":
    for p in main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(f"wrote {p} ({p.stat().st_size} bytes)")
