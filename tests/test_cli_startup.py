"""The header path is torch-free: --version, --help, inspect and verify never import torch.

Each check runs the command line in a fresh interpreter (this test process has torch
loaded already) and reports which heavy modules the command left in ``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "format" / "golden" / "v1"
HEAVY = ("torch", "torchvision", "numpy", "PIL", "h5py", "sklearn")

# Runs the CLI's main() with the given argv, then prints the heavy modules it loaded.
PROBE = f"""
import json, sys
sys.argv = ["habactl", *json.loads(sys.argv[1])]
from habactl.cli.main import main
code = 0
try:
    main()
except SystemExit as stop:
    code = stop.code or 0
loaded = sorted(m for m in {HEAVY!r} if m in sys.modules)
print("PROBE " + json.dumps({{"code": code, "loaded": loaded}}), file=sys.stderr)
"""


def probe(*args: str) -> tuple[int, list[str], str]:
    """(exit code, heavy modules loaded, stdout) of `habactl ARGS` in a new interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps([str(a) for a in args])],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    line = [x for x in done.stderr.splitlines() if x.startswith("PROBE ")]
    assert line, done.stderr
    report = json.loads(line[-1][len("PROBE ") :])
    return report["code"], report["loaded"], done.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["--version"],
        ["--help"],
        [],
        ["inspect", "--help"],
        ["inspect", GOLDEN / "idc-haba.haba"],
        ["inspect", GOLDEN / "rgb-pixel-affine-soft.haba", "--json"],
        ["inspect", GOLDEN / "zca.haba"],
    ],
)
@pytest.mark.slow
def test_header_commands_import_neither_torch_nor_numpy(args):
    code, loaded, _ = probe(*args)
    assert code == 0
    assert loaded == [], f"habactl {' '.join(map(str, args))} imported {loaded}"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["idc-haba", "raw", "zca", "rgb-pixel-affine-soft"])
def test_verify_checks_digests_without_torch(name):
    code, loaded, _ = probe("verify", GOLDEN / f"{name}.haba")
    assert code == 0
    assert "torch" not in loaded and loaded == ["numpy"]


@pytest.mark.slow
def test_verify_without_torch_still_finds_damage(tmp_path):
    damaged = tmp_path / "damaged.haba"
    data = bytearray((GOLDEN / "idc-haba.haba").read_bytes())
    data[-3] ^= 0x40  # inside the last tensor's bytes
    damaged.write_bytes(bytes(data))
    code, loaded, _ = probe("verify", damaged)
    assert code == 1 and "torch" not in loaded


@pytest.mark.slow
def test_bad_archive_errors_do_not_import_torch(tmp_path):
    from PIL import Image

    picture = tmp_path / "picture.png"
    Image.new("L", (4, 4)).save(picture)
    for command in ("inspect", "verify", "evaluate"):
        code, loaded, _ = probe(command, picture)
        assert code == 1 and "torch" not in loaded, (command, loaded)


@pytest.mark.slow
def test_python_dash_m_habactl_is_the_command_line():
    done = subprocess.run(
        [sys.executable, "-m", "habactl", "--version"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.startswith("habactl ")
    done = subprocess.run(
        [sys.executable, "-m", "habactl", "inspect", "--json", str(GOLDEN / "raw.haba")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["manifest"]["pipeline"] == []


def test_arrays_without_torch_match_the_tensors():
    import torch

    from habactl.format import open_archive

    with open_archive(GOLDEN / "rgb-pixel-affine-soft.haba") as archive:
        arrays = archive.arrays()
        tensors = archive.tensors()
    assert sorted(arrays) == sorted(tensors) and arrays
    for name, array in arrays.items():
        assert isinstance(array, np.ndarray) and isinstance(tensors[name], torch.Tensor)
        assert np.array_equal(array, tensors[name].numpy())
