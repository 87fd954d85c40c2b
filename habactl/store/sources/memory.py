"""Sources small enough to be read whole: the embedded sets and torchvision's sets,
whose own uint8 arrays are stored as they are (never as float32)."""

from __future__ import annotations

from habactl.store.sources.arrays import ArraySource


def from_embedded(name: str, options) -> ArraySource:
    """An embedded registry set (``digits``, ``mnist-5k``) as uint8."""
    from habactl.data import load_source

    source = load_source(name)
    pairs = {
        split: (part.images.numpy(), part.labels.numpy())
        for split, part in (("train", source.train), ("test", source.test))
    }
    return ArraySource(
        source.name,
        pairs,
        where=source.name,
        classes=source.classes,
        is_digits=source.is_digits,
        description={"kind": "embedded", "name": source.name},
        identity={"kind": "embedded", "name": source.name, "fingerprint": source.fingerprint},
        resolution=options.resolution,
        mode=options.mode,
    )


def from_torchvision(name: str, options) -> ArraySource:
    """A torchvision set from ``--root`` (CIFAR, MNIST, SVHN, ...), its uint8 arrays."""
    from pathlib import Path

    from habactl.data.torchvision_sources import SPECS, default_root, torchvision_arrays

    classes, pairs = torchvision_arrays(name, options.root, options.download)
    root = Path(options.root).expanduser() if options.root else default_root()
    return ArraySource(
        name,
        pairs,
        where=name,
        classes=classes,
        is_digits=SPECS[name].is_digits,
        description={"kind": "torchvision", "name": name},
        identity={"kind": "torchvision", "name": name, "root": str(root.resolve())},
        resolution=options.resolution,
        mode=options.mode,
    )
