"""Atomic outputs: build beside the target, then rename; never a half-written result."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from habactl.errors import HabaError


def check_target(target: Path, force: bool) -> None:
    if target.exists() and not force:
        raise HabaError(f"{target} exists; pass --force to replace it")
    if not target.parent.exists():
        raise HabaError(f"folder {target.parent} does not exist")


@contextlib.contextmanager
def atomic_path(target: Path, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it replaces `target`."""
    parent = target.parent
    if directory:
        temp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
        os.close(fd)
        temp = Path(name)
    try:
        yield temp
        if directory:
            if target.exists():
                # A directory cannot be replaced in one step: move the old one aside first.
                old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=parent))
                os.replace(target, old / "x")
                os.replace(temp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(temp, target)
        else:
            with open(temp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(temp, target)
    except BaseException:
        if directory:
            shutil.rmtree(temp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
        raise
