"""The one atomic writer: every file habactl writes goes through here.

A file is written as a hidden temporary file in the target's own folder (so the final
rename stays on one file system), synced to disk, renamed over the target and the
folder synced, so that the target is always either the old file or the complete new
one. New files and folders get the permissions of the user's umask (``0o666`` and
``0o777`` masked by it), like any file made by ``open`` or ``mkdir``; ``tempfile``'s
private 0600/0700 modes are never left on a result.

Any ``OSError`` becomes an :class:`OutputError` that names the target and its folder,
so a read-only or full disk is one clear line, not a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from habactl.errors import HabaError

Data = bytes | bytearray | memoryview

# Written into every folder habactl fills (expand's image folders): only such a folder
# is replaced by --force, so a folder of the user's own files is never deleted.
MARKER = ".habactl-output.json"
_CHUNK = 1 << 20


def _write(fd: int, data: memoryview) -> int:
    # Looked up at each call, so that a test may replace os.write (or this function)
    # to simulate a full disk or a crash portably.
    return os.write(fd, data)


class OutputError(HabaError):
    """An output that cannot be written where asked; the message names the place.

    ``reason`` is the system's words alone (e.g. ``No space left on device``) when the
    cause was an OSError, for callers that phrase their own message.
    """

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


class OutputExists(OutputError):
    """The target exists and replacing it was not allowed."""


def describe(error: OSError, target: Path) -> str:
    """``cannot write T: no space left on device (folder F)``: one line, no traceback."""
    return f"cannot write {target}: {reason_of(error)} (folder {folder_of(target)})"


def reason_of(error: OSError) -> str:
    """The system's words for an OSError (h5py and others wrap them in long texts)."""
    code = error.errno
    text = os.strerror(code) if code else (error.strerror or str(error) or type(error).__name__)
    return " ".join(text.split()).rstrip(".")


def folder_of(target: Path) -> Path:
    """The folder that receives ``target``, resolved so that ``-o .`` names a real folder."""
    return Path(os.path.abspath(target)).parent


def absolute(target: str | os.PathLike[str]) -> Path:
    """``target`` as an absolute path without ``.``/``..`` (symlinks left alone)."""
    return Path(os.path.abspath(os.fspath(target)))


# --- checks before any work ---------------------------------------------------------


def check_folder_writable(folder: Path) -> None:
    """Create and remove a probe file in ``folder``: the only test that tells the truth
    about read-only mounts, permissions (also for root) and missing folders."""
    folder = absolute(folder)
    if not folder.exists():
        raise OutputError(f"folder {folder} does not exist")
    if not folder.is_dir():
        raise OutputError(f"{folder} is not a folder")
    probe = folder / f".habactl-probe-{secrets.token_hex(6)}.tmp"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as error:
        raise OutputError(
            f"cannot write into folder {folder}: {reason_of(error)}", reason_of(error)
        ) from None


def check_file_target(target: Path, force: bool, *, example: str = "out.png") -> None:
    """Refuse, before any work, a file target that cannot be written or replaced."""
    path = absolute(target)
    if os.path.isdir(path):
        # --force would not help: a folder is never replaced by a file.
        raise OutputError(f"{target} is a folder; give a file path, e.g. {Path(target) / example}")
    if os.path.lexists(path) and not force:
        raise OutputExists(f"{target} exists; pass --force to replace it")
    check_folder_writable(path.parent)


def check_folder_target(target: Path, force: bool) -> None:
    """Refuse, before any work, a folder target that cannot be written or replaced.

    An existing folder is replaced only if it is empty or habactl wrote it (it holds
    :data:`MARKER`); a folder of anything else is never deleted, --force or not.
    """
    path = absolute(target)
    here = absolute(os.getcwd())
    if path == here or path in here.parents:
        raise OutputError(
            f"{target} is the current folder (or holds it); give a new folder, "
            f"e.g. -o {Path(target) / 'images'}"
        )
    if os.path.lexists(path) and not os.path.isdir(path):
        raise OutputError(f"{target} exists and is not a folder; give a folder path")
    if os.path.isdir(path):
        entries = _entries(path)
        if entries and not is_ours(path):
            more = f" and {len(entries) - 3} more" if len(entries) > 3 else ""
            shown = ", ".join(entries[:3]) + more
            raise OutputError(
                f"{target} is a folder habactl did not write and is not empty "
                f"({shown}); it is never replaced: remove it yourself or give a new "
                f"folder"
            )
        if entries and not force:
            raise OutputExists(f"{target} exists (written by habactl); pass --force to replace it")
    check_folder_writable(path.parent)


def _entries(folder: Path) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except OSError as error:
        raise OutputError(describe(error, folder), reason_of(error)) from None


def is_ours(folder: Path) -> bool:
    """Whether ``folder`` holds the marker habactl writes into the folders it fills."""
    try:
        record = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(record, dict) and record.get("kind") == "habactl-output"


# --- writing ------------------------------------------------------------------------


def write_bytes(target: str | os.PathLike[str], data: Data, *, overwrite: bool = True) -> Path:
    """Write ``data`` to ``target`` atomically and return the target path.

    ``overwrite=False`` never replaces a file, not even one that appears while writing
    (the final step is a hard link, which fails if the name is taken).
    """
    target = Path(target)
    folder = folder_of(target)
    if not overwrite and os.path.lexists(target):
        raise OutputExists(f"{target} exists")
    temp = folder / f".{target.name}.tmp-{secrets.token_hex(8)}"
    try:
        write_new_file(temp, data)
        if overwrite:
            os.replace(temp, target)
        else:
            _place_without_replacing(temp, target)
        sync_folder(folder)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        if isinstance(error, OSError):
            raise OutputError(describe(error, target), reason_of(error)) from None
        raise
    return target


def write_text(target: str | os.PathLike[str], text: str, *, overwrite: bool = True) -> Path:
    return write_bytes(target, text.encode("utf-8"), overwrite=overwrite)


def write_new_file(path: Path, data: Data) -> None:
    """Create ``path`` (it must not exist), write ``data`` and sync it; mode from the umask.

    Raises plain ``OSError``; callers turn it into an :class:`OutputError`.
    """
    # 0o666 and the kernel's umask give the same mode as open(path, "w") would.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: Data) -> None:
    """Write all of ``data`` at ``fd``'s position, in pieces of at most 1 MiB.

    Raises plain ``OSError``. Files written in place (a prepared store's data files)
    use it too, so that a test's simulated full disk reaches them as well.
    """
    view = memoryview(data).cast("B")
    while view:
        written = _write(fd, view[:_CHUNK])
        view = view[written:]


def _place_without_replacing(temp: Path, target: Path) -> None:
    try:
        os.link(temp, target)
    except FileExistsError:
        raise OutputExists(f"{target} exists") from None
    except OSError:  # a file system without hard links: check, then rename
        if os.path.lexists(target):
            raise OutputExists(f"{target} exists") from None
        os.replace(temp, target)
        return
    os.unlink(temp)


def sync_folder(folder: Path) -> None:
    """Make renames in ``folder`` durable; not possible everywhere (Windows), so best effort."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_folder(
    target: str | os.PathLike[str], *, kind: str, details: dict | None = None
) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target``; on success it becomes ``target``.

    Fill it with :func:`write_new_file` and ``mkdir``. It gets :data:`MARKER` (naming
    ``kind``), so that a later --force may replace it. Call :func:`check_folder_target`
    first: an existing ``target`` is replaced here without further questions.
    """
    target = absolute(target)
    parent = target.parent
    temp = parent / f".{target.name}.tmp-{secrets.token_hex(8)}"
    old: Path | None = None
    try:
        os.mkdir(temp, 0o777)  # the umask decides, as for mkdir(1)
        yield temp
        record = {"kind": "habactl-output", "written_by": kind, **(details or {})}
        write_new_file(temp / MARKER, (json.dumps(record, sort_keys=True) + "\n").encode())
        for folder, _, _ in os.walk(temp):
            sync_folder(Path(folder))
        if os.path.lexists(target):
            # A folder cannot be replaced in one step: move the old one aside first.
            old = parent / f".{target.name}.old-{secrets.token_hex(8)}"
            os.replace(target, old)
        try:
            os.replace(temp, target)
        except OSError:
            if old is not None:
                os.replace(old, target)
                old = None
            raise
        sync_folder(parent)
    except BaseException as error:
        shutil.rmtree(temp, ignore_errors=True)
        if isinstance(error, OSError):
            raise OutputError(describe(error, target), reason_of(error)) from None
        raise
    finally:
        if old is not None:
            if old.is_symlink():  # -o was a link to a folder: the link goes, not its files
                old.unlink()
            else:
                shutil.rmtree(old, ignore_errors=True)
