"""DC / DSA / DM reference code: ``res_<method>_<dataset>_<model>_<ipc>ipc.pt``.

``{'data': [[images, labels], ...], 'accs_all_exps': {...}}``: one (images, labels) pair
per experiment, images already mean/std-normalised, labels (N,) class indices.
"""

from __future__ import annotations

from pathlib import Path

from habactl.interop.common import Imported, InteropError, Options, labelled_images, one_file
from habactl.interop.safe_load import load_torch


def read(files: list[Path], options: Options) -> Imported:
    path = one_file(files, "dc", "res_*.pt")
    content = load_torch(path)
    if not isinstance(content, dict) or not isinstance(content.get("data"), (list, tuple)):
        raise InteropError(f"{path.name}: expected a dict with a 'data' list of [images, labels]")
    experiments = content["data"]
    if not experiments:
        raise InteropError(f"{path.name}: 'data' holds no experiment")
    index = len(experiments) - 1 if options.experiment is None else options.experiment
    if not 0 <= index < len(experiments):
        raise InteropError(
            f"{path.name}: --experiment {index} is out of range (0 to {len(experiments) - 1})"
        )
    pair = experiments[index]
    if not isinstance(pair, (list, tuple)) or len(pair) != 2:
        raise InteropError(f"{path.name}: data[{index}] is not an [images, labels] pair")
    where = f"{path.name} data[{index}]"
    notes = [f"experiment {index} of {len(experiments)}"]
    images, labels = labelled_images(pair[0], pair[1], (where, where), notes)
    return Imported(bases=images, labels=labels, space="normalised", notes=notes)
