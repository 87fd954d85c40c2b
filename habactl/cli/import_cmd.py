"""`habactl import`: a distilled set in another codebase's layout -> a checked .haba archive."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from habactl.cli.app import app, guarded
from habactl.errors import HabaError
from habactl.interop.registry import IMPORTERS

_KINDS = "; ".join(f"{name}: {line}" for name, (_, _, line) in IMPORTERS.items())

EXAMPLES = """Examples:

  habactl import mtt run/ --dataset cifar10 -o mtt.haba

  habactl import mtt run/ --dataset cifar10 --zca-from cifar10 --root data -o zca.haba

  habactl import haba-official images_best.pt weights_best.pt --dataset cifar10 -o haba.haba

  habactl import dc res_DM_CIFAR10_ConvNet_10ipc.pt --dataset cifar10 -o dm.haba

  habactl import idc data.pt --factor 2 --dataset cifar10 --ipc 10 -o idc.haba

  habactl import npz mine.npz --mean 0.5 --std 0.25 --classes a,b,c -o mine.haba

Files are read with torch.load(weights_only=True), safetensors or numpy without pickle:
a file that needs full unpickling is refused and nothing in it runs. See docs/interop.md."""


def _floats(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise HabaError(f"{option}: expected comma-separated numbers, got {text!r}") from None


Kind = Annotated[str, typer.Argument(help=f"The layout. {_KINDS}.")]
Files = Annotated[list[Path], typer.Argument(help="The files (or the folder holding them).")]
Output = Annotated[Path, typer.Option("-o", "--output", help="The .haba archive to write.")]
Dataset = Annotated[
    str | None,
    typer.Option(
        "--dataset",
        help="Class names and the mean/std the public code normalises with: "
        "mnist, fashion-mnist, cifar10, cifar100, svhn, tiny-imagenet.",
    ),
]
Mean = Annotated[str | None, typer.Option("--mean", help="Per-channel mean, e.g. 0.49,0.48,0.45.")]
Std = Annotated[str | None, typer.Option("--std", help="Per-channel std (with --mean).")]
ZcaFrom = Annotated[
    str | None,
    typer.Option(
        "--zca-from",
        help="Real training data (a data set name or file) to rebuild the ZCA "
        "whitening from, as MTT does (kornia, eps 0.1, on [0,1] pixels).",
    ),
]
Root = Annotated[Path | None, typer.Option("--root", help="Folder of the --zca-from data set.")]
Classes = Annotated[str | None, typer.Option("--classes", help="Comma-separated class names.")]
Ipc = Annotated[
    int | None,
    typer.Option(
        "--ipc",
        min=1,
        help="The images-per-class budget claimed; inspect shows the true "
        "account. Default: what the stored bases take.",
    ),
]
Factor = Annotated[int, typer.Option("--factor", min=1, help="idc: the multi-formation factor.")]
Experiment = Annotated[
    int | None,
    typer.Option(
        "--experiment", min=0, help="dc: which experiment of res_*.pt (default: the last)."
    ),
]
Force = Annotated[bool, typer.Option("--force", help="Replace an existing output.")]


@app.command("import", epilog=EXAMPLES)
@guarded
def import_(
    kind: Kind,
    files: Files,
    output: Output,
    dataset: Dataset = None,
    mean: Mean = None,
    std: Std = None,
    zca_from: ZcaFrom = None,
    root: Root = None,
    classes: Classes = None,
    ipc: Ipc = None,
    factor: Factor = 1,
    experiment: Experiment = None,
    force: Force = False,
) -> None:
    """Import a distilled set saved by a public codebase, safely, into a .haba archive."""
    from habactl.format import open_archive, storage_account
    from habactl.interop.build import Normalisation, build_archive
    from habactl.interop.common import Options
    from habactl.interop.presets import preset as find_preset
    from habactl.interop.registry import importer
    from habactl.runtime.atomic import check_file_target

    read = importer(kind)
    kind = kind.strip().lower()
    check_file_target(output, force, example="out.haba")  # before any file is read
    chosen = find_preset(dataset, kind) if dataset else None
    names = [c.strip() for c in classes.split(",")] if classes else None
    if names is None and chosen is not None:
        names = list(chosen.classes)
    means, stds = _floats(mean, "--mean"), _floats(std, "--std")
    if (means is None) != (stds is None):
        raise HabaError("--mean and --std go together")
    if means is None and chosen is not None:
        means, stds = list(chosen.mean), list(chosen.std)
    norm = Normalisation(mean=means, std=stds)
    if zca_from is not None:
        from habactl.data.opening import open_data

        norm.zca_images = open_data(zca_from, root=root).train.images
    imported = read(
        list(files), Options(classes=names, factor=factor, experiment=experiment, dataset=dataset)
    )
    path = build_archive(
        imported,
        output,
        kind=kind,
        files=list(files),
        classes=names,
        preset=chosen,
        norm=norm,
        ipc=ipc,
        force=force,
    )
    for note in imported.notes + norm.notes:
        print(f"habactl: note: {note}", file=sys.stderr)
    with open_archive(path) as archive:
        account = storage_account(archive.manifest)
        count = archive.info.bases.count * archive.layout.expansion
        ipc = archive.info.storage.ipc
    print(
        f"wrote {path}: {count:,} training images; stores {account.stored_values:,} values "
        f"= {account.ratio:.2f}x the budget of ipc {ipc}",
        file=sys.stderr,
    )
