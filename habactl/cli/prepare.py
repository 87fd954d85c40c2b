"""`habactl prepare`: decode a data set once into a store that the loops read lazily."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from habactl.cli.app import app, examples_epilog, guarded, plural, stderr

EXAMPLES = [
    "habactl prepare digits -o digits.store",
    "habactl prepare tiny.npz -o tiny.store          # x_train, y_train, x_test, y_test",
    "habactl prepare imagenet/ -o in64.store --resolution 64   # train/, val/",
    "habactl prepare cifar10 --root ~/data -o cifar10.store",
    "habactl prepare --verify in64.store             # rehash every class",
]


Source = Annotated[
    str,
    typer.Argument(
        help="A registry name (digits, mnist-5k, cifar10, ...), a folder of class folders, "
        "an .npz, .h5/.hdf5 or .npy file; with --verify, the store to check."
    ),
]
Output = Annotated[
    Path | None,
    typer.Option(
        "-o", "--output", help="The store: a new folder (or one prepare left unfinished)."
    ),
]
Resolution = Annotated[
    int | None,
    typer.Option(
        "--resolution",
        min=1,
        help="Resize the shorter side to R (antialiased) and crop the centre R x R. "
        "Without it all images must share one size.",
    ),
]
Mode = Annotated[
    str | None,
    typer.Option("--mode", help="Convert every image to RGB or L (grayscale) instead of refusing."),
]
Workers = Annotated[
    int | None,
    typer.Option("--workers", min=0, help="Decoding processes for image folders (default: cores)."),
]
SkipBad = Annotated[
    bool, typer.Option("--skip-bad", help="Leave out images that do not decode, and list them.")
]
Root = Annotated[
    Path | None,
    typer.Option("--root", help="Folder of torchvision data sets (default: $HABACTL_DATA)."),
]
Download = Annotated[bool, typer.Option("--download", help="Fetch torchvision data sets.")]
Labels = Annotated[
    Path | None,
    typer.Option("--labels", help="With an images .npy file: the .npy file of its labels."),
]
ImagesKey = Annotated[
    str | None, typer.Option("--images-key", help="HDF5/npz: the images array (default: images).")
]
LabelsKey = Annotated[
    str | None, typer.Option("--labels-key", help="HDF5/npz: the labels array (default: labels).")
]
Verify = Annotated[
    bool,
    typer.Option(
        "--verify",
        help="Rehash every class of the store SOURCE and compare with its fingerprint "
        "(then a copied store opens again).",
    ),
]
Force = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Replace a finished store, or restart an unfinished one (a folder only if "
        "habactl wrote it).",
    ),
]
Quiet = Annotated[bool, typer.Option("-q", "--quiet", help="No progress line.")]


@app.command(epilog=examples_epilog(EXAMPLES))
@guarded
def prepare(
    source: Source,
    output: Output = None,
    resolution: Resolution = None,
    mode: Mode = None,
    workers: Workers = None,
    skip_bad: SkipBad = False,
    root: Root = None,
    download: Download = False,
    labels: Labels = None,
    images_key: ImagesKey = None,
    labels_key: LabelsKey = None,
    verify: Verify = False,
    force: Force = False,
    quiet: Quiet = False,
) -> None:
    """Decode a data set once into a store: uint8 images, class after class, on disk.

    A killed or failed prepare continues where it stopped when the same command runs
    again. Other commands then read the store lazily. See docs/store.md.
    """
    from habactl.store.layout import StoreError

    if verify:
        _verify(Path(source))
        return
    if output is None:
        raise StoreError("give the store's folder with -o, e.g. -o data.store")
    if mode is not None and mode not in ("RGB", "L"):
        raise StoreError(f"--mode must be RGB or L, not {mode!r}")
    from habactl.store.prepare import prepare as run_prepare
    from habactl.store.sources import Options

    options = Options(
        root=str(root) if root is not None else None,
        download=download,
        resolution=resolution,
        mode=mode,
        workers=(os.cpu_count() or 1) if workers is None else workers,
        skip_bad=skip_bad,
        labels=str(labels) if labels is not None else None,
        images_key=images_key,
        labels_key=labels_key,
    )
    line, started, progress = _progress_line(quiet)
    try:
        result = run_prepare(
            source, output, options=options, force=force, progress=progress, started=started
        )
    finally:
        if line is not None:
            line.stop()
    for name in result.skipped:
        stderr.print(f"skipped {name}", markup=False)
    index = result.index
    rate = result.written / result.seconds if result.seconds > 0 else 0.0
    c, h, w = index.image_shape
    stderr.print(
        f"wrote {result.path}: {plural(index.splits['train'].count, 'train image')}, "
        f"{plural(index.splits['test'].count, 'test image')}, "
        f"{plural(len(index.classes), 'class', 'classes')}, {c}x{h}x{w} "
        f"({rate:,.0f} img/s){_skipped(result.skipped)}",
        markup=False,
    )
    stderr.print(f"fingerprint {index.fingerprint}", markup=False)


def _progress_line(quiet: bool) -> tuple[Any, Callable[[str], None], Callable[[int, int], None]]:
    """The progress line (None when quiet) and prepare's two callbacks that feed it."""
    line = None
    if not quiet:
        from habactl.distill.progress import ProgressLine

        line = ProgressLine(stderr, unit="img")

    def started(text: str) -> None:
        if line is not None:
            line.message(f"prepare {text}")

    def progress(done: int, total: int) -> None:
        if line is None:
            return
        if not line.elapsed():
            line.start(total, done, "prepare")
        rate = line.rate()
        line.update(done, total=total, speed="" if rate is None else f"{rate:,.0f} img/s")

    return line, started, progress


def _skipped(names: list[str]) -> str:
    return f", {plural(len(names), 'image')} skipped" if names else ""


def _verify(path: Path) -> None:
    from habactl.store.layout import StoreError
    from habactl.store.reader import reseal, verify_store

    problems = verify_store(path)
    if problems:
        more = f" (and {plural(len(problems) - 1, 'more problem')})" if len(problems) > 1 else ""
        raise StoreError(problems[0] + more)
    index = reseal(path)
    stderr.print(
        f"{path}: intact, {plural(len(index.classes), 'class', 'classes')}, "
        f"fingerprint {index.fingerprint}",
        markup=False,
    )
