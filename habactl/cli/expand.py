"""`habactl expand`: write the full expanded data set as PNG folders, HDF5 or npz."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import typer

from habactl.atomic import atomic_path, check_target
from habactl.cli.app import app, guarded
from habactl.errors import HabaError

FORMATS = ("png", "h5", "npz")


def output_format(target: Path) -> str:
    suffix = target.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        return "h5"
    if suffix == ".npz":
        return "npz"
    if suffix == "":
        return "png"
    raise HabaError(f"cannot tell the output format of {target}: use a folder, .h5/.hdf5 or .npz")


def safe_folder_name(name: str, index: int) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name).strip("._")
    return f"{index:03d}_{cleaned}" if cleaned else f"{index:03d}"


@app.command()
@guarded
def expand(
    archive: Path = typer.Argument(..., help="The .haba archive."),
    output: Path = typer.Option(..., "-o", "--output",
                                help="A folder (class folders of PNGs), a .h5/.hdf5 or a .npz file."),
    pixels: bool = typer.Option(False, "--pixels",
                                help="h5/npz: store [0,1] pixels instead of the normalised training values."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output."),
) -> None:
    """Decode every (basis, hallucinator) pair and write the result."""
    from habactl.loader import HabaDataset

    kind = output_format(output)
    check_target(output, force)
    dataset = HabaDataset(archive)
    images, labels = dataset.tensors()
    transform = dataset.test_transform()
    classes = dataset.classes
    if kind == "png":
        write_png_folders(output, transform.to_pixels(images), labels, classes)
    else:
        values = transform.to_pixels(images) if pixels else images
        space = "pixels" if pixels else "normalised"
        meta = json.dumps({"classes": classes, "space": space,
                           "normalization": dataset.manifest["normalization"],
                           "source_archive": archive.name}, sort_keys=True)
        if kind == "h5":
            write_h5(output, values.numpy(), labels.numpy(), meta)
        else:
            write_npz(output, values.numpy(), labels.numpy(), classes, meta)
    print(f"wrote {len(dataset):,} images to {output}", file=sys.stderr)


def write_png_folders(target: Path, images, labels, classes: list[str]) -> None:
    from PIL import Image

    pixels = (images.clamp(0, 1) * 255).round().to(dtype=__import__("torch").uint8)
    hard = labels if labels.dim() == 1 else labels.argmax(dim=1)
    counters: dict[int, int] = {}
    with atomic_path(target, directory=True) as temp:
        folders = {c: temp / safe_folder_name(name, c) for c, name in enumerate(classes)}
        for folder in folders.values():
            folder.mkdir()
        for image, label in zip(pixels, hard.tolist()):
            index = counters.get(label, 0)
            counters[label] = index + 1
            array = image.permute(1, 2, 0).numpy()
            mode = "L" if array.shape[2] == 1 else "RGB"
            picture = Image.fromarray(array[:, :, 0] if mode == "L" else array, mode=mode)
            picture.save(folders[label] / f"{index:06d}.png")


def write_h5(target: Path, images: np.ndarray, labels: np.ndarray, meta: str) -> None:
    import h5py

    with atomic_path(target) as temp:
        with h5py.File(temp, "w") as handle:
            handle.create_dataset("images", data=images)
            handle.create_dataset("labels", data=labels)
            handle.attrs["habactl"] = meta


def write_npz(target: Path, images: np.ndarray, labels: np.ndarray, classes: list[str],
              meta: str) -> None:
    with atomic_path(target) as temp:
        with open(temp, "wb") as handle:
            np.savez(handle, images=images, labels=labels, classes=np.array(classes),
                     habactl=np.array(meta))
