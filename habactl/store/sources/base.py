"""What prepare needs from a source, whatever its kind: a header known before decoding,
and the images of one split as class-ordered uint8 pieces."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from habactl.store.writer import Piece

# Images per piece are chosen so that a piece holds about this many bytes: memory stays
# flat in the data set's size.
CHUNK_BYTES = 16 << 20


def chunk_images(image_shape: tuple[int, int, int]) -> int:
    c, h, w = image_shape
    return max(1, CHUNK_BYTES // (c * h * w))


@dataclass
class Header:
    """Everything known about a source before its images are decoded.

    ``counts`` are the images listed per class and split (a source that skips bad files
    may deliver fewer); ``description`` is recorded in the store's index; ``identity``
    in the state file, so that a resumed prepare reads the very same input.
    """

    name: str
    classes: list[str]
    image_shape: tuple[int, int, int]
    is_digits: bool
    counts: dict[str, list[int]]
    description: dict
    identity: dict = field(default_factory=dict)


class Source:
    """A source opened for preparing. Subclasses set ``header`` and implement pieces()."""

    header: Header

    def pieces(self, split: str, first_class: int) -> Iterator[Piece]:
        """(class, uint8 (n, C, H, W)) pieces of ``split`` in class order, from
        ``first_class`` on; at most about CHUNK_BYTES each."""
        raise NotImplementedError

    def skipped(self, split: str, cls: int) -> list[str]:
        """Files of class ``cls`` in ``split`` left out (--skip-bad): names and reasons."""
        return []

    def close(self) -> None:
        """Release files, worker processes, scratch space."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def class_members(labels: np.ndarray, num_classes: int) -> list[np.ndarray]:
    """Positions of each class's items, in their original order."""
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(num_classes + 1))
    return [order[bounds[c] : bounds[c + 1]] for c in range(num_classes)]
