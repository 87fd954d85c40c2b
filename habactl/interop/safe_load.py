"""Loading files written by other codebases without running anything in them.

``torch.load(..., weights_only=True)`` unpickles only tensors, numbers, strings, lists,
tuples and dicts: a pickle that names any other class or function is refused before
that object is built, so its ``__reduce__`` never runs. safetensors and ``numpy.load``
with ``allow_pickle=False`` hold no code at all.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

from habactl.errors import HabaError


class InteropError(HabaError):
    """A file of another codebase cannot be read, or does not have the expected layout."""


_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


def load_torch(path: Path) -> Any:
    """A ``torch.save`` file's content, refused when it needs full unpickling."""
    import torch

    _check_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        what = _refused_global(str(error))
        raise InteropError(
            f"{path.name}: refused, it needs full unpickling ({what}); habactl reads only "
            "tensors, numbers, lists and dicts from .pt files and ran nothing from this one"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        detail = " ".join(str(error).split())[:160] or type(error).__name__
        raise InteropError(f"{path.name}: not a readable torch.save file ({detail})") from None


def _refused_global(message: str) -> str:
    match = _GLOBAL_RE.search(message)
    if match is None:
        return "an object that is not plain data"
    return f"it names {match.group(1)}"


def load_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    _check_file(path)
    try:
        return dict(load_file(str(path), device="cpu"))
    except (SafetensorError, OSError, ValueError) as error:
        raise InteropError(f"{path.name}: not a readable safetensors file ({error})") from None


def load_npz(path: Path) -> dict[str, Any]:
    import numpy as np
    import torch

    _check_file(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: torch.from_numpy(np.array(data[key])) for key in data.files}
    except ValueError as error:  # object arrays need pickle: refused
        raise InteropError(f"{path.name}: refused ({error}); nothing from it was run") from None
    except (OSError, zipfile.BadZipFile, TypeError) as error:
        raise InteropError(f"{path.name}: not a readable .npz file ({error})") from None


def load_any(path: Path) -> Any:
    """By suffix: .safetensors, .npz, anything else through ``load_torch``."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return load_safetensors(path)
    if suffix == ".npz":
        return load_npz(path)
    return load_torch(path)


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise InteropError(f"{path}: no such file")
