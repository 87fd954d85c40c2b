"""Hostile packed and narrow data (format 1.1): every lie an archive can tell about its
uint4 / bfloat16 bases or their grid is one clear line from verify, inspect and expand,
and a non-zero exit; sizes are refused before anything is allocated."""

from __future__ import annotations

import json
import re
import resource
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import habactl.cli.expand  # noqa: F401  (registers the commands)
import habactl.cli.inspect_cmd  # noqa: F401
import habactl.cli.verify  # noqa: F401
from habactl.cli.app import app
from habactl.format import open_archive
from helpers import forge_archive, one_error_line

runner = CliRunner()
REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "format" / "golden" / "v1"


def golden(name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    with open_archive(GOLDEN / f"{name}.haba") as archive:
        fields = {
            k: v for k, v in archive.manifest.items() if k not in ("tensors", "content_digest")
        }
        return fields, {k: v.clone() for k, v in archive.tensors().items()}


def header_edit(data: bytes, name: str, **entry) -> bytes:
    """The same file with one safetensors header entry changed (the data left as it is)."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    header[name].update(entry)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + length :]


def uint4(change) -> bytes:
    fields, tensors = golden("quantize-uint4-idc")
    change(tensors)
    return forge_archive(tensors, fields)


def bfloat16(change) -> bytes:
    fields, tensors = golden("quantize-bfloat16-idc")
    change(tensors)
    return forge_archive(tensors, fields)


def _set(name: str, value) -> object:
    return lambda t: t.__setitem__(name, value)


def _fill(name: str, index, value) -> object:
    return lambda t: t[name].__setitem__(index, value)


GOOD_UINT4 = uint4(lambda t: None)
GOOD_BF16 = bfloat16(lambda t: None)

# Lies in the header or the manifest: refused before any tensor byte is read, so by
# inspect (which reads the header only) as well as by verify and expand.
HEADER = {
    "packed bytes disagree with the shape": (
        header_edit(GOOD_UINT4, "bases", shape=[4, 2, 3, 3]),
        r"tensor 'bases': data_offsets \[\d+, \d+\] do not hold 72 bytes of U8",
    ),
    "odd width packed to floor(W/2) bytes": (
        uint4(_set("bases", torch.zeros(4, 2, 3, 1, dtype=torch.uint8))),
        r"tensor 'bases': is U8 \[4, 2, 3, 1\], the manifest implies U8 \[4, 2, 3, 2\]",
    ),
    "codes stored unpacked": (
        uint4(_set("bases", torch.zeros(4, 2, 3, 3, dtype=torch.uint8))),
        r"tensor 'bases': is U8 \[4, 2, 3, 3\], the manifest implies U8 \[4, 2, 3, 2\]",
    ),
    "a scale per channel too many": (
        uint4(_set("pipeline.0.scale", torch.ones(3))),
        r"tensor 'pipeline.0.scale': is F32 \[3\], the manifest implies F32 \[2\]",
    ),
    "a zero-point of the wrong rank": (
        uint4(_set("pipeline.0.zero_point", torch.zeros(2, 1))),
        r"tensor 'pipeline.0.zero_point': is F32 \[2, 1\], the manifest implies F32 \[2\]",
    ),
    "a zero-point stored as codes": (
        uint4(_set("pipeline.0.zero_point", torch.zeros(2, dtype=torch.uint8))),
        r"tensor 'pipeline.0.zero_point': is U8 \[2\], the manifest implies F32 \[2\]",
    ),
    "bfloat16 bytes disagree with the shape": (
        header_edit(GOOD_BF16, "bases", shape=[3, 1, 3, 5]),
        r"tensor 'bases': data_offsets \[\d+, \d+\] do not hold 90 bytes of BF16",
    ),
    "bfloat16 bases stored as float16": (
        bfloat16(lambda t: t.__setitem__("bases", t["bases"].half())),
        r"tensor 'bases': is F16 \[3, 1, 3, 4\], the manifest implies BF16 \[3, 1, 3, 4\]",
    ),
    "a huge packed shape in a small file": (
        # 24 GiB declared consistently (shape and offsets agree) in a file of 1 KiB
        header_edit(GOOD_UINT4, "bases", shape=[2**31, 2, 3, 2], data_offsets=[0, 2**33 * 3]),
        r"data (starts at byte \d+, expected \d+ \(overlapping|ends at byte \d+ but the file "
        r"holds \d+ data bytes \(truncated)",
    ),
}

# Lies in the values: verify reads every tensor and names the damaged one; expand refuses
# before writing anything. (inspect reads the header only: it describes such a file.)
VALUES = {
    "a NaN scale": (uint4(_fill("pipeline.0.scale", 0, float("nan"))), r"'pipeline.0.scale'"),
    "an infinite zero-point": (
        uint4(_fill("pipeline.0.zero_point", 1, float("inf"))),
        r"tensor 'pipeline.0.zero_point': 1 values are NaN or infinite",
    ),
    "a negative scale": (
        uint4(_fill("pipeline.0.scale", 1, -0.25)),
        r"tensor 'pipeline.0.scale': must be positive",
    ),
    "a zero-point beyond the codes": (
        uint4(_fill("pipeline.0.zero_point", 0, 16.0)),
        r"tensor 'pipeline.0.zero_point': must lie in 0..15",
    ),
    "a non-zero padding nibble": (
        uint4(_fill("bases", (0, 0, 0, 1), 0xF5)),
        r"tensor 'bases': the padding nibble of an odd-width uint4 row is not 0",
    ),
    "a bfloat16 NaN": (
        bfloat16(_fill("bases", (1, 0, 2, 3), float("nan"))),
        r"tensor 'bases': 1 values are NaN or infinite",
    ),
}


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "hostile.haba"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", sorted(HEADER))
def test_header_lies_are_one_line_from_verify_inspect_and_expand(tmp_path, case):
    data, message = HEADER[case]
    path = write(tmp_path, data)
    for command in (["verify"], ["inspect"], ["expand", "-o", str(tmp_path / "out")]):
        line = one_error_line(runner.invoke(app, [*command[:1], str(path), *command[1:]]))
        assert "hostile.haba" in line and re.search(message, line), (command, line)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", sorted(VALUES))
def test_value_lies_are_one_line_from_verify_and_expand(tmp_path, case):
    data, message = VALUES[case]
    path = write(tmp_path, data)
    for command in (["verify"], ["expand", "-o", str(tmp_path / "out")]):
        line = one_error_line(runner.invoke(app, [*command[:1], str(path), *command[1:]]))
        assert re.search(message, line), (command, line)
    assert not (tmp_path / "out").exists()
    assert runner.invoke(app, ["inspect", str(path)]).exit_code == 0  # the header is sound


def test_the_forgeries_without_their_lie_are_intact(tmp_path):
    # Every case above differs from one of these by its one lie alone.
    for data in (GOOD_UINT4, GOOD_BF16):
        path = write(tmp_path, data)
        assert runner.invoke(app, ["verify", str(path)]).exit_code == 0
        result = runner.invoke(app, ["expand", str(path), "-o", str(tmp_path / "out.npz")])
        assert result.exit_code == 0, result.output
        (tmp_path / "out.npz").unlink()


@pytest.mark.slow
@pytest.mark.parametrize("lie", ["shape", "count"])
def test_gigabytes_declared_are_refused_under_a_small_memory_cap(tmp_path, lie):
    fields, tensors = golden("quantize-uint4-idc")
    if lie == "shape":
        data = header_edit(forge_archive(tensors, fields), "bases", shape=[2**33, 2, 3, 2])
    else:  # 2^34 packed bases: 400 GiB decoded, in a 1 KiB file
        bases = {**fields["bases"], "count": 2**34, "per_class": [2**33, 2**33]}
        data = forge_archive(tensors, {**fields, "bases": bases})
    path = write(tmp_path, data)
    cap = 1 << 30  # 1 GiB of address space: far below what the lie would allocate

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    for command in ("verify", "inspect"):
        done = subprocess.run(
            [sys.executable, "-m", "habactl", command, str(path)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
            preexec_fn=limit,
        )
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 1 and len(lines) == 1, done.stderr
        assert lines[0].startswith("habactl: error: ") and "MemoryError" not in done.stderr
