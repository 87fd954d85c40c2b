"""The plain helpers test modules share (``from helpers import one_error_line``).

Fixtures and pytest hooks live in conftest.py; the tests a new decode stage or data
source inherits live in stage_contract.py and source_contract.py; the crash hooks a
subprocess can load live in faults.py. Everything else two test files need is here, by
what it builds:

- command results: ``one_error_line``
- data: ``tiny_mnist``, ``fake_source``, ``write_idx``, ``write_fake_mnist``
- networks: ``digits_teacher`` (a small teacher trained on ``digits``)
- archives by hand: ``make_manifest``, ``make_tensors``, ``split_archive``,
  ``craft_archive``, ``rewrite``, ``rejects``, ``forge_archive``, ``hallucinate_stage``,
  ``stored_tensors``
- decoding by hand: ``place`` (frequency coefficients into their masks)
- processes: ``habactl`` (one process or a torchrun job), ``compress_process``,
  ``error_lines``, ``needs_torchrun`` and the tolerances of the two-rank comparisons
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from faults import SCRIPT as FAULTS_SCRIPT
from faults import VARIABLES as FAULT_VARIABLES

ROOT = Path(__file__).resolve().parents[1]


# --- command results ----------------------------------------------------------------------


def one_error_line(result, exit_code: int = 1) -> str:
    """The stderr of a failed command: exit status ``exit_code`` (1: a HabaError), exactly
    one line, ``habactl: error: ...``, and no traceback anywhere in the output. Returns
    that line for the caller's own checks."""
    assert result.exit_code == exit_code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("habactl: error: ")
    assert "Traceback" not in result.output
    return lines[0]


# --- data ---------------------------------------------------------------------------------


@functools.cache
def tiny_mnist(classes: int = 3, train_per_class: int = 20, test_per_class: int = 5):
    """A real source: the first `classes` digits of mnist-5k, `train_per_class` training
    and `test_per_class` test images each."""
    from habactl.data import load_source
    from habactl.data.base import LabeledImages, make_source

    full = load_source("mnist-5k")

    def take(split: LabeledImages, per: int) -> LabeledImages:
        picks = torch.cat(
            [torch.nonzero(split.labels == k).flatten()[:per] for k in range(classes)]
        )
        return LabeledImages(images=split.images[picks].clone(), labels=split.labels[picks].clone())

    return make_source(
        f"mnist-5k-{classes}",
        full.classes[:classes],
        take(full.train, train_per_class),
        take(full.test, test_per_class),
        is_digits=True,
    )


def fake_source(shape=(1, 8, 8), classes=3) -> SimpleNamespace:
    """What the archive writer reads of a data source (name, fingerprint, classes, image
    shape), with no images: for archives whose bases are made up."""
    channels, height, width = shape
    return SimpleNamespace(
        name="fixture",
        fingerprint="sha256:" + "ab" * 32,
        classes=[f"class-{c}" for c in range(classes)],
        channels=channels,
        height=height,
        width=width,
    )


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file: magic 0x0000 08 <ndim> (ubyte data), then each dimension as a
    big-endian uint32, then the bytes."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


FAKE_MNIST_TRAIN_PER_CLASS, FAKE_MNIST_TEST_PER_CLASS = 3, 1


def write_fake_mnist(root: Path, folder: str = "MNIST", size: int = 28) -> Path:
    """The four uncompressed raw files torchvision's MNIST family reads, under
    ``root/folder/raw``: 10 classes of random pixels, ``FAKE_MNIST_TRAIN_PER_CLASS``
    training and ``FAKE_MNIST_TEST_PER_CLASS`` test images each. Returns the raw folder."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, per_class in (
        ("train", FAKE_MNIST_TRAIN_PER_CLASS),
        ("t10k", FAKE_MNIST_TEST_PER_CLASS),
    ):
        labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
        images = rng.integers(0, 256, size=(labels.size, size, size), dtype=np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return raw


# --- networks ---------------------------------------------------------------------------
def digits_teacher(path: Path, epochs: int = 2, **settings):
    """A ConvNet-BN teacher trained on ``digits`` for a few epochs, written to ``path``
    (about 3 s on one core; test modules make one per module in a fixture)."""
    from habactl.data.opening import open_data
    from habactl.teacher import TeacherSettings, train_teacher

    return train_teacher(open_data("digits"), path, TeacherSettings(epochs=epochs, **settings))


# --- archives by hand ---------------------------------------------------------------------

FINGERPRINT = "sha256:" + "ab" * 32


def make_manifest(
    classes: int = 3,
    per_class: int = 2,
    shape: tuple[int, int, int] = (1, 4, 4),
    labels: str = "hard",
    normalization: dict | None = None,
    pipeline: list | None = None,
    base_shape: tuple[int, int, int] | None = None,
    counts: str = "all",
) -> dict:
    """A valid manifest without its ``tensors`` and digests (the writer adds them):
    `per_class` bases of `shape` for each of `classes` classes, mean-std normalisation,
    the recommended training recipe, fixed provenance."""
    c, h, w = shape
    return {
        "classes": [f"class-{i}" for i in range(classes)],
        "image": {"channels": c, "height": h, "width": w},
        "bases": {
            "count": classes * per_class,
            "per_class": [per_class] * classes,
            "shape": list(base_shape or shape),
        },
        "labels": {"kind": labels},
        "pipeline": pipeline or [],
        "normalization": normalization
        or {"kind": "mean-std", "mean": [0.5] * c, "std": [0.25] * c},
        "training": {
            "learned_lr": None,
            "recommended": {
                "arch": "convnet",
                "epochs": 10,
                "batch_size": 256,
                "lr": 0.01,
                "momentum": 0.9,
                "weight_decay": 0.0005,
                "augmentation": "dsa",
            },
        },
        "provenance": {
            "dataset": {"name": "toy", "fingerprint": FINGERPRINT},
            "objective": "random",
            "hyperparameters": {"ipc": 1},
            "iterations": 0,
            "seed": 0,
            "library": "habactl 0.1.0",
            "created": "2026-11-24T12:00:00Z",
        },
        "storage": {
            "ipc": per_class,
            "counts": counts,
            "budget_values": per_class * classes * c * h * w,
        },
    }


def make_tensors(manifest: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """The tensors `manifest` asks for: random bases, hard labels in class order or soft
    labels, and an identity ZCA matrix when the normalisation is ZCA (no stage tensors)."""
    g = torch.Generator().manual_seed(seed)
    count = manifest["bases"]["count"]
    n_classes = len(manifest["classes"])
    tensors = {"bases": torch.randn(count, *manifest["bases"]["shape"], generator=g)}
    if manifest["labels"]["kind"] == "hard":
        tensors["labels"] = torch.repeat_interleave(
            torch.arange(n_classes), torch.tensor(manifest["bases"]["per_class"])
        )
    else:
        tensors["labels"] = torch.softmax(torch.randn(count, n_classes, generator=g), dim=1)
    if manifest["normalization"]["kind"] == "zca":
        d = manifest["image"]["channels"] * manifest["image"]["height"] * manifest["image"]["width"]
        tensors["normalization.zca"] = torch.eye(d)
    return tensors


def split_archive(data: bytes) -> tuple[dict, bytes]:
    """An archive's bytes as its safetensors header (parsed) and its data section."""
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def craft_archive(header: dict | bytes, body: bytes = b"", length: int | None = None) -> bytes:
    """Raw safetensors bytes with an arbitrary header (and optionally a lying length)."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw) if length is None else length) + raw + body


def rewrite(path: Path, edit_manifest=None, edit_data=None, fix_digests: bool = False) -> None:
    """Edit an archive in place: its manifest and/or tensor data bytes.

    With fix_digests the sha256 fields and content_digest are recomputed, so that only
    the check under test can catch the edit. The manifest digest (format 1.2), when the
    manifest has one, is always recomputed after the edit, as a forger would: the edit
    is then caught by the check under test, not by the digest (tests/test_manifest_digest.py
    damages manifests without it).
    """
    from habactl.format import ArchiveError
    from habactl.format.digest import content_digest, manifest_digest

    header, body = split_archive(path.read_bytes())
    manifest = json.loads(header["__metadata__"]["haba"])
    body = bytearray(body)
    if edit_data:
        edit_data(header, body)
    if fix_digests:
        items = []
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            b, e = entry["data_offsets"]
            manifest["tensors"][name]["sha256"] = hashlib.sha256(body[b:e]).hexdigest()
            items.append((name, entry["dtype"], entry["shape"], bytes(body[b:e])))
        manifest["content_digest"] = content_digest(items)
    if edit_manifest:
        edit_manifest(manifest)
    if isinstance(manifest, dict) and "manifest_digest" in manifest:
        try:
            manifest["manifest_digest"] = manifest_digest(manifest)
        except ArchiveError:  # not canonical JSON at all (NaN, a lone surrogate): the
            pass  # reader refuses it before any digest is looked at
    header["__metadata__"]["haba"] = json.dumps(manifest)
    path.write_bytes(craft_archive(header, bytes(body)))


def rejects(path: Path, *fragments: str, verify_all: bool = False, **kwargs) -> str:
    """Assert the archive is refused with one ArchiveError naming the file and fragments."""
    from habactl.format import ArchiveError, open_archive

    with pytest.raises(ArchiveError) as info:
        with open_archive(path, **kwargs) as archive:
            if verify_all:
                archive.tensors()
    message = str(info.value)
    assert message.startswith(f"{path.name}: "), message
    for fragment in fragments:
        assert fragment in message, message
    assert "\n" not in message
    return message


def forge_archive(tensors: dict[str, torch.Tensor], manifest: dict) -> bytes:
    """An archive's bytes with no validation (what a hostile writer can make): every
    digest recomputed, the manifest digest too from format 1.2 on."""
    from safetensors.torch import save

    from habactl.format.digest import (
        dtype_name,
        manifest_digest,
        tensor_sha256,
        tensors_content_digest,
    )
    from habactl.format.manifest import canonical_json

    def stored_dtype(t: torch.Tensor) -> str:
        name = dtype_name(t)
        assert name is not None, t.dtype
        return name

    m = {k: v for k, v in manifest.items() if k != "manifest_digest"}
    m["tensors"] = {
        name: {"dtype": stored_dtype(t), "shape": list(t.shape), "sha256": tensor_sha256(t)}
        for name, t in tensors.items()
    }
    m["content_digest"] = tensors_content_digest(tensors)
    if m.get("format_version") not in ("1.0", "1.1"):
        m["manifest_digest"] = manifest_digest(m)
    return save(
        {k: v.contiguous() for k, v in tensors.items()}, metadata={"haba": canonical_json(m)}
    )


def hallucinate_stage(count: int = 3, arch: str = "channel-affine") -> dict:
    """A manifest pipeline entry: `count` small hallucinators of architecture `arch`."""
    return {
        "name": "hallucinate",
        "version": 1,
        "configuration": {"arch": arch, "count": count, "hidden": 3, "kernel": 3},
    }


def stored_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor an archive stores, by name."""
    from habactl.format import open_archive

    with open_archive(path) as archive:
        return archive.tensors()


# --- decoding by hand ---------------------------------------------------------------------


def place(x: np.ndarray, mask: np.ndarray, classes=None) -> np.ndarray:
    """Coefficients (N, C, 1, K) at the mask's ones, row-major; zeros elsewhere. A
    per-class mask (classes, C, H, W) places basis b at mask[classes[b]]'s ones."""
    n, c = x.shape[:2]
    full = np.zeros((n, c, *mask.shape[-2:]))
    for b in range(n):
        own = mask if classes is None else mask[classes[b]]
        for ch in range(c):
            full[b, ch][own[ch].astype(bool)] = x[b, ch, 0]
    return full


# --- processes ----------------------------------------------------------------------------

TORCHRUN = Path(sys.executable).with_name("torchrun")
needs_torchrun = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed")

# SOURCE_DATE_EPOCH of the runs whose archives are compared byte for byte.
EPOCH = "1700000000"

# The N = 2 equivalence. One step on two ranks is one step on one process up to the order
# of the floating-point sums (each rank sums its own classes, then the ranks' gradients are
# summed), so the first iteration's loss agrees to float32 rounding: 1e-5 relative. Later
# iterations amplify those last bits at a rate that depends on the CPU's kernels: after 12
# iterations the bases differed by ~1e-6 with AVX-512 on an AMD EPYC and by 1.3e-4 with
# PyTorch's scalar kernels on an Intel Xeon. So the stored tensors are only held to 1e-2,
# an order of magnitude inside what a real difference makes (a class whose bases were not
# distilled keeps its initial images: differences of order 1).
FIRST_LOSS_TOLERANCE = 1e-5
TOLERANCE = 1e-2


def environment(env: dict | None = None) -> dict:
    """This environment without a launcher's variables, one thread, this checkout."""
    environment = {
        k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")
    }
    environment.update({"OMP_NUM_THREADS": "1", "HABACTL_DIST_TIMEOUT": "30", **(env or {})})
    environment["PYTHONPATH"] = str(ROOT)
    return environment


def command(world: int | None, *launcher: str, faults: bool = False) -> list[str]:
    """``python -m habactl`` (world None) or ``torchrun ... -m habactl`` with `world` ranks
    and the torchrun options `launcher` (e.g. ``--max-restarts 1``); with `faults`, the
    script tests/faults.py in place of ``-m habactl`` (the same command line, with the
    faults its environment variables name)."""
    program = [str(FAULTS_SCRIPT)] if faults else ["-m", "habactl"]
    if world is None:
        return [sys.executable, *program]
    port = str(29500 + (os.getpid() % 2000))
    torchrun = [str(TORCHRUN), "--nproc-per-node", str(world), "--master-port", port]
    return [*torchrun, *launcher, *program]


def run_habactl(
    *args, cwd: Path, world: int | None = 2, env: dict | None = None, timeout=300, launcher=()
) -> subprocess.CompletedProcess:
    """Run habactl as one process (world None) or under torchrun with `world` ranks; a
    run whose `env` sets a fault variable goes through tests/faults.py. `timeout` only
    catches a hang: a 2-core machine busy with other work runs a tiny job for minutes."""
    with_faults = any(name in FAULT_VARIABLES for name in env or {})
    return subprocess.run(
        [*command(world, *launcher, faults=with_faults), *map(str, args)],
        cwd=cwd,
        env=environment(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_process_and_two_ranks(
    folder: Path, *args: str
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """`habactl ARGS` as one process (-o one.haba) and on two ranks (-o two.haba) in
    `folder`: the two archives' stored tensors, once both runs succeeded and stored the
    same tensors."""
    one = run_habactl(*args, "-o", "one.haba", cwd=folder, world=None)
    two = run_habactl(*args, "-o", "two.haba", cwd=folder, world=2)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    single, split = stored_tensors(folder / "one.haba"), stored_tensors(folder / "two.haba")
    assert sorted(split) == sorted(single)
    return single, split


def assert_same_step(single: dict[str, torch.Tensor], split: dict[str, torch.Tensor]) -> None:
    """Two ranks stored what one process stored, up to the order of the ranks' sums:
    rounding that differs by CPU kind, held to TOLERANCE (see above)."""
    for name in single:
        assert float((split[name] - single[name]).abs().max()) < TOLERANCE, name


def habactl_peak_kib(args: list[str], out: Path, timeout: int = 300) -> int:
    """The peak resident memory (KiB) of `habactl ARGS` in a child process: its VmHWM,
    once it wrote `out`.

    Not ru_maxrss: Linux carries the maximum over exec, so a child's ru_maxrss (and
    RUSAGE_CHILDREN's) is at least this test process's own size when it forked."""
    code = (
        f"import sys; from habactl.cli.main import main; sys.argv = {['habactl', *args]!r}\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0 and out.is_file(), done.stderr
    return int(done.stdout.split()[-1])


def compress_process(args: list[str], **env: str) -> subprocess.CompletedProcess:
    """`habactl compress ARGS` in a process of its own with SOURCE_DATE_EPOCH fixed (so
    that two runs with the same inputs write the same bytes); `env` may name a fault of
    tests/faults.py, e.g. ``HABACTL_FAULT_KILL_AFTER="3"``."""
    return run_habactl(
        "compress",
        *args,
        cwd=ROOT,
        world=None,
        env={"SOURCE_DATE_EPOCH": EPOCH, **env},
        timeout=300,
    )


def error_lines(stderr: str) -> list[str]:
    """The ``habactl: error:`` lines of a run's stderr (a torchrun job's ranks each may
    print some)."""
    return [line for line in stderr.splitlines() if line.startswith("habactl: error:")]


def matching_config(
    objective: str,
    settings: dict,
    codec: str = "raw",
    ipc: int = 1,
    iterations: int = 0,
    engine: dict | None = None,
    **options,
):
    """A tiny DistillConfig for a network-matching objective's tests (dc, dsa, dcc, cafe): SGD 0.1
    with momentum 0.5, no contrastive term, `settings` under the objective's `options`;
    `augment`, `quantize` and `frequency` among `options` go to the engine, over `engine`."""
    from habactl.distill import DistillConfig

    chosen = {k: options.pop(k) for k in ("augment", "quantize", "frequency") if k in options}
    return DistillConfig(
        objective=objective,
        codec=codec,
        ipc=ipc,
        iterations=iterations,
        lr_bases=0.1,
        momentum=0.5,
        contrastive=False,
        checkpoint_every=1000,
        contrastive_settings={"batch": 4},
        objective_settings={**settings, **options},
        **{**(engine or {}), **chosen},
    )
