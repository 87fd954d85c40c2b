"""Write the golden archives of format v1 (1.0 to 1.4) and their expected decoded output.

    python format/golden/make_golden.py [--check]

Run once per released format version; the files are then kept forever and read by
`tests/test_golden.py`. Without `--check` it adds the files that do not exist yet and
compares the others (it never rewrites a kept file); `--check` only compares, and
fails on a missing file too (the writer must reproduce every golden file exactly).
Values are spelled out by closed-form arithmetic (no RNG), so any implementation
can regenerate them. The 1.0 and 1.1 files are written by `save_legacy_archive`, which
exists for this purpose only (no manifest digest, the lowest version that holds the
archive, as habactl wrote them then); the 1.2 to 1.4 files by `save_archive`, like every
new archive. An archive with per-crop labels (1.4) also has its views in the expected
output: `crops.box`, `crops.mirror`, `crops.labels` (decoded) and `crops.images` (each
view's pixels, SPEC §2.2).
"""

from __future__ import annotations

import argparse
import filecmp
import math
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save

HERE = Path(__file__).resolve().parent / "v1"
CREATED = "2026-11-24T00:00:00Z"


def wave(*shape: int, phase: float = 0.0) -> torch.Tensor:
    """Deterministic, non-trivial values: sin of the flat index."""
    count = math.prod(shape)
    values = [math.sin(0.7 * i + phase) for i in range(count)]
    return torch.tensor(values, dtype=torch.float32).reshape(shape)


def manifest(*, classes, image, bases, labels_kind, pipeline, normalization, learned_lr=None,
             objective="random", ipc=1, counts="all", version="1.0", base_shape=None,
             hyperparameters=None, labels=None, teacher=None) -> dict:
    # base_shape: the bases' [C, h, w] when the stored tensor has another shape (packed).
    # labels: a whole labels entry (format 1.3 forms); teacher: provenance.teacher (1.3).
    out = {
        "format": "haba",
        "format_version": version,
        "classes": classes,
        "image": dict(zip(("channels", "height", "width"), image)),
        "bases": {"count": int(bases.shape[0]),
                  "per_class": [int(bases.shape[0]) // len(classes)] * len(classes),
                  "shape": list(base_shape or bases.shape[1:])},
        "labels": labels or {"kind": labels_kind},
        "pipeline": pipeline,
        "normalization": normalization,
        "training": {"learned_lr": learned_lr,
                     "recommended": {"arch": "convnet", "epochs": 1000, "batch_size": 256,
                                     "lr": 0.01 if learned_lr is None else learned_lr,
                                     "momentum": 0.9, "weight_decay": 0.0005,
                                     "lr_decay_at": 0.5, "augmentation": "dsa"}},
        "provenance": {"dataset": {"name": "golden", "fingerprint": "sha256:" + "0" * 64},
                       "objective": objective, "hyperparameters": hyperparameters or {},
                       "iterations": 0,
                       "seed": 0, "library": "habactl 0.1.0", "created": CREATED},
        "storage": {"ipc": ipc, "counts": counts,
                    "budget_values": ipc * len(classes) * math.prod(image)},
    }
    if teacher is not None:
        out["provenance"]["teacher"] = teacher
    return out


def hallucinate(arch: str, count: int) -> dict:
    return {"name": "hallucinate", "version": 1,
            "configuration": {"arch": arch, "count": count, "hidden": 3, "kernel": 3}}


def stage_tensors(pipeline: list[dict], base_shape) -> dict[str, torch.Tensor]:
    from habactl.codecs import describe_pipeline

    spec = describe_pipeline(pipeline, tuple(base_shape))
    tensors = {}
    for phase, (name, shape) in enumerate(sorted(spec.params.items())):
        values = 0.2 * wave(*shape, phase=phase)
        if name.endswith(".scale"):
            values = 1.0 + values  # near-identity hallucinators, as trained ones are
        tensors[name] = values
    return tensors


def cases() -> dict[str, tuple[dict, dict[str, torch.Tensor]]]:
    out = {}
    # 1. A raw archive: images kept as they are.
    bases = wave(6, 1, 6, 6)
    out["raw"] = (manifest(classes=["a", "b", "c"], image=(1, 6, 6), bases=bases,
                           labels_kind="hard", pipeline=[],
                           normalization={"kind": "mean-std", "mean": [0.5], "std": [0.25]}),
                  {"bases": bases, "labels": torch.tensor([0, 0, 1, 1, 2, 2])})
    # 2. IDC + HaBa: half-resolution bases, upsampled, through 3 channel-affine hallucinators.
    pipeline = [{"name": "upsample", "version": 1, "configuration": {"factor": 2, "mode": "bilinear"}},
                hallucinate("channel-affine", 3)]
    bases = wave(4, 1, 4, 4, phase=1.0)
    out["idc-haba"] = (manifest(classes=["zero", "one"], image=(1, 8, 8), bases=bases,
                                labels_kind="hard", pipeline=pipeline, ipc=2,
                                normalization={"kind": "mean-std", "mean": [0.1307], "std": [0.3081]}),
                       {"bases": bases, "labels": torch.tensor([0, 0, 1, 1]),
                        **stage_tensors(pipeline, (1, 4, 4))})
    # 3. RGB, the reference pixel-affine hallucinators, soft labels and a learned lr.
    pipeline = [hallucinate("pixel-affine", 2)]
    bases = wave(2, 3, 6, 6, phase=2.0)
    soft = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    out["rgb-pixel-affine-soft"] = (
        manifest(classes=["cat", "dog"], image=(3, 6, 6), bases=bases, labels_kind="soft",
                 pipeline=pipeline, learned_lr=0.02, objective="mtt",
                 normalization={"kind": "mean-std", "mean": [0.49, 0.48, 0.45],
                                "std": [0.25, 0.24, 0.26]}),
        {"bases": bases, "labels": soft, **stage_tensors(pipeline, (3, 6, 6))})
    # 4. ZCA whitening: the matrix travels as a tensor.
    bases = wave(2, 1, 4, 4, phase=3.0)
    zca = torch.eye(16) + 0.05 * wave(16, 16, phase=4.0)
    out["zca"] = (manifest(classes=["x", "y"], image=(1, 4, 4), bases=bases, labels_kind="hard",
                           pipeline=[], normalization={"kind": "zca", "mean": [0.5], "std": [0.5],
                                                       "eps": 0.1}),
                  {"bases": bases, "labels": torch.tensor([0, 1]), "normalization.zca": zca})
    # Format 1.1 (the quantize stage); the 1.0 files above are unchanged by these.
    # 5. uint4 codes, two a byte (odd width 3: the last byte's high nibble is 0), one
    #    scale and zero-point per channel, then upsampled x2 to 2x6x6.
    codes = torch.tensor([(5 * i + 3) % 16 for i in range(4 * 2 * 3 * 3)], dtype=torch.uint8)
    codes = codes.reshape(4, 2, 3, 3)
    packed = torch.nn.functional.pad(codes, (0, 1))
    packed = packed[..., 0::2] | (packed[..., 1::2] << 4)
    pipeline = [{"name": "quantize", "version": 1,
                 "configuration": {"dtype": "uint4", "granularity": "channel"}},
                {"name": "upsample", "version": 1,
                 "configuration": {"factor": 2, "mode": "bilinear"}}]
    out["quantize-uint4-idc"] = (
        manifest(classes=["p", "q"], image=(2, 6, 6), bases=packed, base_shape=[2, 3, 3],
                 labels_kind="hard", pipeline=pipeline, version="1.1",
                 normalization={"kind": "mean-std", "mean": [0.5, 0.4], "std": [0.2, 0.3]}),
        {"bases": packed, "labels": torch.tensor([0, 0, 1, 1]),
         "pipeline.0.scale": torch.tensor([0.125, 0.25]),
         "pipeline.0.zero_point": torch.tensor([8.0, 3.0])})
    # 6. float16 bases (no scale) through one channel-affine hallucinator.
    pipeline = [{"name": "quantize", "version": 1, "configuration": {"dtype": "float16"}},
                hallucinate("channel-affine", 2)]
    bases = wave(2, 1, 5, 5, phase=5.0).half()
    out["quantize-float16-haba"] = (
        manifest(classes=["u", "v"], image=(1, 5, 5), bases=bases, labels_kind="hard",
                 pipeline=pipeline, version="1.1", ipc=2,
                 normalization={"kind": "none"}),
        {"bases": bases, "labels": torch.tensor([0, 1]), **stage_tensors(pipeline, (1, 5, 5))})
    # 7. uint8 DCT coefficients (quantize -> frequency -> upsample): 6 of the 3x3
    #    frequencies per channel, a different mask per channel, decoded to 3x3, then x2.
    mask = torch.zeros(2, 9, dtype=torch.uint8)
    mask[0, [0, 1, 2, 3, 4, 6]] = 1
    mask[1, [0, 1, 3, 4, 5, 8]] = 1
    codes = torch.tensor([(11 * i + 7) % 256 for i in range(2 * 2 * 6)], dtype=torch.uint8)
    pipeline = [{"name": "quantize", "version": 1, "configuration": {"dtype": "uint8"}},
                {"name": "frequency", "version": 1,
                 "configuration": {"height": 3, "keep": 6, "width": 3}},
                {"name": "upsample", "version": 1,
                 "configuration": {"factor": 2, "mode": "nearest"}}]
    out["quantize-frequency-idc"] = (
        manifest(classes=["m", "n"], image=(2, 6, 6), bases=codes.reshape(2, 2, 1, 6),
                 labels_kind="hard", pipeline=pipeline, version="1.1",
                 normalization={"kind": "none"}),
        {"bases": codes.reshape(2, 2, 1, 6), "labels": torch.tensor([0, 1]),
         "pipeline.0.scale": torch.tensor([0.03125]),
         "pipeline.0.zero_point": torch.tensor([128.0]),
         "pipeline.1.mask": mask.reshape(2, 3, 3)})
    # 8. bfloat16 bases (the top half of a float32: its range, 8 significant bits), three
    #    classes, upsampled x2 (bicubic). Values beyond float16's range are kept.
    pipeline = [{"name": "quantize", "version": 1, "configuration": {"dtype": "bfloat16"}},
                {"name": "upsample", "version": 1,
                 "configuration": {"factor": 2, "mode": "bicubic"}}]
    bases = (wave(3, 1, 3, 4, phase=6.0) * torch.tensor([1.0, 1e-20, 1e20, 1.0])).bfloat16()
    out["quantize-bfloat16-idc"] = (
        manifest(classes=["r", "s", "t"], image=(1, 6, 8), bases=bases, labels_kind="hard",
                 pipeline=pipeline, version="1.1",
                 normalization={"kind": "mean-std", "mean": [0.25], "std": [0.5]}),
        {"bases": bases, "labels": torch.tensor([0, 1, 2])})
    # 9. A per-class frequency mask (one 3x3 mask of 4 kept frequencies per class, three
    #    classes, each different) in front of two channel-affine hallucinators: every
    #    basis decodes through its own class's mask.
    mask = torch.zeros(3, 1, 9, dtype=torch.uint8)
    mask[0, 0, [0, 1, 3, 4]] = 1
    mask[1, 0, [0, 2, 6, 8]] = 1
    mask[2, 0, [1, 3, 5, 7]] = 1
    pipeline = [{"name": "frequency", "version": 1,
                 "configuration": {"classes": 3, "height": 3, "keep": 4, "mask": "per-class",
                                   "width": 3}},
                hallucinate("channel-affine", 2)]
    bases = wave(6, 1, 1, 4, phase=7.0)
    out["frequency-per-class-haba"] = (
        manifest(classes=["e", "f", "g"], image=(1, 3, 3), bases=bases, base_shape=[1, 1, 4],
                 labels_kind="hard", pipeline=pipeline, version="1.1", ipc=2,
                 normalization={"kind": "mean-std", "mean": [0.2], "std": [0.3]}),
        {"bases": bases, "labels": torch.tensor([0, 0, 1, 1, 2, 2]),
         **stage_tensors(pipeline, (1, 1, 4)), "pipeline.0.mask": mask.reshape(3, 1, 3, 3)})
    # Format 1.2 (the manifest digest): small on purpose, so that tests/test_manifest_digest.py
    # can change every byte of them one at a time. Numbers with an exponent and text
    # beyond ASCII are in the manifest, so that its canonical form is exercised.
    # 10. Raw images, the MNIST normalisation.
    bases = wave(2, 1, 3, 3, phase=8.0)
    out["raw-1.2"] = (
        manifest(classes=["zéro", "un"], image=(1, 3, 3), bases=bases, labels_kind="hard",
                 pipeline=[], version="1.2",
                 normalization={"kind": "mean-std", "mean": [0.1307], "std": [0.3081]},
                 hyperparameters={"eps": 1e-05, "scale": 1e+16}),
        {"bases": bases, "labels": torch.tensor([0, 1])})
    # 11. HaBa: two channel-affine hallucinators of one hidden channel, a learned lr.
    pipeline = [{"name": "hallucinate", "version": 1,
                 "configuration": {"arch": "channel-affine", "count": 2, "hidden": 1,
                                   "kernel": 3}}]
    bases = wave(2, 1, 3, 3, phase=9.0)
    out["haba-1.2"] = (
        manifest(classes=["x", "y"], image=(1, 3, 3), bases=bases, labels_kind="hard",
                 pipeline=pipeline, version="1.2", learned_lr=0.0125, objective="mtt", ipc=2,
                 normalization={"kind": "mean-std", "mean": [0.1307], "std": [0.3081]},
                 hyperparameters={"syn_steps": 20, "lr_lr": 1e-05}),
        {"bases": bases, "labels": torch.tensor([0, 1]), **stage_tensors(pipeline, (1, 3, 3))})
    # Format 1.3 (soft-label storage forms, a recorded teacher); the files above are
    # unchanged by these. Label values are spelled out as stored.
    # 12. float16 soft labels: rows rounded to binary16 (0.6 is not exact there).
    bases = wave(4, 1, 3, 3, phase=10.0)
    rows = torch.tensor([[0.75, 0.25], [0.6, 0.4], [0.1, 0.9], [0.3, 0.7]]).half()
    out["labels-float16-1.3"] = (
        manifest(classes=["a", "b"], image=(1, 3, 3), bases=bases, labels_kind="soft",
                 labels={"kind": "soft", "form": "float16"}, pipeline=[], version="1.3",
                 ipc=2, normalization={"kind": "mean-std", "mean": [0.5], "std": [0.25]}),
        {"bases": bases, "labels": rows})
    # 13. uint8 soft labels: codes and one scale per row (the row's largest value / 255);
    #     the last row is all zeros (scale 0).
    bases = wave(3, 1, 3, 3, phase=11.0)
    codes = torch.tensor([[255, 51, 0], [17, 255, 85], [0, 0, 0]], dtype=torch.uint8)
    scale = torch.tensor([0.8 / 255, 0.5 / 255, 0.0])
    out["labels-uint8-1.3"] = (
        manifest(classes=["k", "l", "m"], image=(1, 3, 3), bases=bases, labels_kind="soft",
                 labels={"kind": "soft", "form": "uint8"}, pipeline=[], version="1.3",
                 normalization={"kind": "none"}),
        {"bases": bases, "labels": codes, "labels.scale": scale})
    # 14. top-2 of 4 classes (U8 indices), behind two channel-affine hallucinators: each
    #     row's rest, 1 - (the two values), spread over the other two classes. Dyadic
    #     values: decoded exactly. The teacher that made them is recorded.
    pipeline = [{"name": "hallucinate", "version": 1,
                 "configuration": {"arch": "channel-affine", "count": 2, "hidden": 1,
                                   "kernel": 3}}]
    bases = wave(4, 1, 3, 3, phase=12.0)
    values = torch.tensor([[0.5, 0.25], [0.625, 0.125], [0.5, 0.5], [0.25, 0.25]]).half()
    indices = torch.tensor([[0, 1], [1, 3], [2, 0], [3, 2]], dtype=torch.uint8)
    out["labels-top-k-1.3"] = (
        manifest(classes=["w", "x", "y", "z"], image=(1, 3, 3), bases=bases,
                 labels_kind="soft", labels={"kind": "soft", "form": "top-k", "k": 2},
                 pipeline=pipeline, version="1.3", objective="random",
                 normalization={"kind": "mean-std", "mean": [0.1307], "std": [0.3081]},
                 teacher={"name": "teacher.safetensors", "sha256": "1" * 64,
                          "arch": "convnet", "temperature": 4.0}),
        {"bases": bases, "labels": values, "labels.indices": indices,
         **stage_tensors(pipeline, (1, 3, 3))})
    # Format 1.4 (per-crop labels); the files above are unchanged by these.
    # 15. top-1 of 3 classes per basis and per view, two epochs of views of the six items
    #     three bases make behind two hallucinators: whole, quarter and off-centre crops,
    #     two of them mirrored. Dyadic boxes and values: exact in binary16.
    pipeline = [{"name": "hallucinate", "version": 1,
                 "configuration": {"arch": "channel-affine", "count": 2, "hidden": 1,
                                   "kernel": 3}}]
    bases = wave(3, 1, 4, 4, phase=13.0)
    values = torch.tensor([[0.75], [0.5], [0.875]]).half()
    indices = torch.tensor([[0], [1], [2]], dtype=torch.uint8)
    box = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 0.5, 0.5], [-0.5, 0.5, 0.5, 0.5],
                        [0.25, -0.25, 0.75, 0.75], [0.0, 0.125, 0.5, 0.875],
                        [-0.375, 0.0, 0.625, 1.0]] * 2).half()
    mirror = torch.tensor([0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0], dtype=torch.uint8)
    view_values = torch.tensor([[1.0], [0.625], [0.5], [0.75], [0.25], [1.0],
                                [0.875], [0.5], [0.5], [0.375], [0.75], [0.5]]).half()
    view_indices = torch.tensor([[0], [0], [1], [1], [2], [2],
                                 [0], [1], [1], [0], [2], [1]], dtype=torch.uint8)
    out["labels-crops-1.4"] = (
        manifest(classes=["p", "q", "r"], image=(1, 4, 4), bases=bases, labels_kind="soft",
                 labels={"kind": "soft", "form": "top-k", "k": 1, "crops": {"epochs": 2}},
                 pipeline=pipeline, version="1.4", objective="random",
                 normalization={"kind": "none"},
                 teacher={"name": "teacher.safetensors", "sha256": "2" * 64,
                          "arch": "convnet", "temperature": 1.0}),
        {"bases": bases, "labels": values, "labels.indices": indices,
         "labels.crops": view_values, "labels.crops.indices": view_indices,
         "labels.crops.box": box, "labels.crops.mirror": mirror,
         **stage_tensors(pipeline, (1, 4, 4))})
    return out


def expected_output(path: Path) -> dict[str, torch.Tensor]:
    """What an archive decodes to: its items and labels, and its stored views."""
    from habactl.training.dataset import HabaDataset

    dataset = HabaDataset(path)
    images, labels = dataset.tensors()
    out = {"images": images, "labels": labels}
    views = dataset.crop_views()
    if views is not None:
        every = torch.arange(views.items)
        out["crops.box"] = views.box.flatten(0, 1)
        out["crops.mirror"] = views.mirror.flatten(0, 1)
        out["crops.labels"] = views.labels.flatten(0, 1)
        out["crops.images"] = torch.cat(
            [views.apply(images, epoch, every) for epoch in range(views.epochs)])
    return {name: t.contiguous() for name, t in out.items()}


def write(folder: Path) -> list[Path]:
    from habactl.format import save_archive, save_legacy_archive

    written = []
    for name, (manifest_, tensors) in cases().items():
        # Files of the versions before 1.2 are reproduced as they were written then.
        legacy = manifest_["format_version"] in ("1.0", "1.1")
        writer = save_legacy_archive if legacy else save_archive
        path = writer(folder / f"{name}.haba", tensors, manifest_, overwrite=True)
        expected = folder / f"{name}.expected.safetensors"
        expected.write_bytes(save(expected_output(path)))
        written += [path, expected]
    return written


def same(made: Path, kept: Path) -> bool:
    """Archives byte for byte; expected outputs value by value within SPEC §7's
    tolerance (decoding may round differently from one machine or torch to another)."""
    if filecmp.cmp(made, kept, shallow=False):
        return True
    if not kept.name.endswith(".expected.safetensors"):
        return False
    a, b = load_file(made), load_file(kept)
    decoded = ("images", "crops.images")  # float32 arithmetic: within the tolerance
    return set(a) == set(b) and all(
        torch.allclose(a[n], b[n], atol=1e-5, rtol=1e-5) if n in decoded else torch.equal(a[n], b[n])
        for n in a)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        made = write(Path(temp))
        # Kept files are never rewritten: they are compared; only missing ones are added.
        kept = [p for p in made if (HERE / p.name).exists()]
        mismatched = [p.name for p in kept if not same(p, HERE / p.name)]
        missing = [p for p in made if p not in kept]
        if not args.check:
            for path in missing:
                shutil.copyfile(path, HERE / path.name)
                print(f"wrote {(HERE / path.name).relative_to(HERE.parent.parent)}")
    if args.check and missing:
        print(f"missing: {[p.name for p in missing]}")
    print("golden files reproduced" if not mismatched else f"differ: {mismatched}")
    return 1 if mismatched or (args.check and missing) else 0


if __name__ == "__main__":
    sys.exit(main())
