"""What ``inspect`` and ``verify`` say when given a teacher file instead of an archive.

A teacher file is a safetensors file too, so the archive reader's first complaint
(``__metadata__ must hold exactly one key 'haba'``) would send a user looking for
damage. These helpers recognise the teacher's header (standard library only) and
describe the file instead.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from habactl.cli.app import stdout
from habactl.teacher.header import TeacherError, TeacherInfo, describe_info, peek_teacher


def _size(path: Path) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def show_teacher(path: Path, *, as_json: bool, as_config: bool) -> bool:
    """Print `path`'s teacher header (``inspect``) and return True; False (nothing
    printed) when `path` is no teacher file. Torch is not imported."""
    info = peek_teacher(path)
    if info is None:
        return False
    if as_config:
        raise TeacherError(
            f"{path} is a teacher file ({_printable(describe_info(info, _size(path)))}), "
            "not an archive: "
            "--config applies to archives"
        )
    if as_json:
        record = {"path": str(path), "bytes": _size(path), "teacher": info.to_json()}
        print(json.dumps(record, indent=2, sort_keys=True))
        return True
    from rich.markup import escape

    stdout.print(f"[bold]{escape(str(path))}[/]  (a teacher file, not an archive)")
    for key, value in _rows(info, _size(path)):
        stdout.print(f"  [cyan]{key:<14}[/]{escape(_printable(value))}")
    return True


def _rows(info: TeacherInfo, size: int | None) -> list[tuple[str, str]]:
    channels, height, width = info.image_shape
    shown = ", ".join(info.classes[:10]) + (" …" if len(info.classes) > 10 else "")
    norm = info.normalization
    rows = [
        ("network", f"{info.arch}, width {info.width:g}, {info.norm} norm"),
        ("classes", f"{len(info.classes)}: {shown}"),
        ("image", f"{channels}×{height}×{width}"),
        (
            "normalisation",
            f"{norm.get('kind', '?')} mean {_numbers(norm.get('mean'))} "
            f"std {_numbers(norm.get('std'))}",
        ),
        ("data set", f"{info.dataset.get('name', '?')}  ({info.dataset.get('fingerprint')})"),
    ]
    training = info.training
    if "test_accuracy" in training:
        rows.append(
            (
                "accuracy",
                f"train {training.get('train_accuracy')}, test {training['test_accuracy']} "
                f"after {training.get('epochs', '?')} epochs",
            )
        )
    if size is not None:
        rows.append(("bytes", f"{size:,}"))
    return rows


def _numbers(values: Any) -> str:
    if not isinstance(values, list):
        return str(values)
    return "[" + ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in values) + "]"


def _printable(text: str) -> str:
    # The header is untrusted: no terminal escapes, no line breaks.
    return "".join(c if c.isprintable() else "?" for c in text)


def verify_teacher(path: Path) -> bool:
    """``verify`` on a teacher file: load it (every weight must fit the network and be
    finite) and say so; False when `path` is no teacher file."""
    info = peek_teacher(path)
    if info is None:
        return False
    from habactl.teacher.file import load_teacher

    loaded = load_teacher(path)  # TeacherError: one line, exit 1
    print(
        f"{path}: a teacher file, not an archive "
        f"({_printable(describe_info(info, loaded.file_bytes))}); "
        "its weights load into the network and are finite (teacher files carry no digest)",
        file=sys.stderr,
    )
    return True


__all__ = ["show_teacher", "verify_teacher"]
