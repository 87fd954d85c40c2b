"""Sources read whole through habactl.data (the embedded sets): small enough for memory."""

from __future__ import annotations

from pathlib import Path

from habactl.store.sources.arrays import ArraySource


def from_data_source(spec: str, options) -> ArraySource:
    """A registry name or a path loaded by :func:`habactl.data.load_source`, as uint8."""
    from habactl.data import load_source

    extra = {}
    if options.images_key:
        extra["images_key"] = options.images_key
    if options.labels_key:
        extra["labels_key"] = options.labels_key
    source = load_source(spec, root=options.root, download=options.download, **extra)
    path = Path(spec)
    identity: dict = {"spec": source.name, "fingerprint": source.fingerprint}
    if path.exists():
        identity["path"] = str(path.resolve())
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
        description={"kind": "data-source", "name": source.name},
        identity=identity,
        resolution=options.resolution,
    )
