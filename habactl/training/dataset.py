"""`HabaDataset`: a .haba archive as an ordinary map-style torch Dataset.

Each item is one (basis, variant) pair decoded on the fly: with a `hallucinate` stage of
K hallucinators, B bases give B·K items (item i = basis i // K through hallucinator
i % K). Batched fetching (`__getitems__`, used by DataLoader) decodes a whole batch in
one vectorised call. The object pickles without its tensors, so each DataLoader worker
opens the archive itself, lazily, on first use.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from habactl.errors import HabaError
from habactl.format.view import Manifest
from habactl.training.recipe import Recipe

if TYPE_CHECKING:
    from habactl.training.views import CropViews

MODES = ("all-pairs", "random-pair")
# Decoding is deterministic, so a small expanded set is decoded once per process and kept.
AUTO_CACHE_BYTES = 256 * 2**20
# Bases decoded per call when the whole set is decoded: a HaBa decode of a chunk holds a
# few activation maps of its images, so the chunk, not the archive, sets the peak.
DECODE_CHUNK = 256


class _Decoded:
    """What one process needs to decode items: bases, labels and the built pipeline."""

    def __init__(self, path: Path, verify: bool) -> None:
        from habactl.codecs import Pipeline
        from habactl.codecs.pipeline import basis_classes
        from habactl.format import open_archive

        with open_archive(path, verify=verify) as archive:
            tensors = archive.tensors()
            info = archive.info
            # Every storage form of soft labels decodes to (count, classes) float32.
            self.labels = archive.labels()
        self.bases = tensors["bases"]
        # The bases' shape from the manifest: a quantize stage may store them packed.
        self.pipeline = Pipeline.from_manifest(info.pipeline_entries(), info.bases.shape)
        self.pipeline.load_tensors({k: v for k, v in tensors.items() if k.startswith("pipeline.")})
        self.pipeline.eval().requires_grad_(False)
        # Each basis' class (bases are class-sorted): a per-class stage decodes by it.
        self.classes = basis_classes(list(info.bases.per_class))
        self.zca = tensors.get("normalization.zca")
        self.pid = os.getpid()
        self.expanded: Tensor | None = None

    def expand_all(self, chunk: int = DECODE_CHUNK) -> Tensor:
        """Every (basis, variant) pair, item b*E + v, decoded in batches of `chunk` bases
        into one preallocated tensor (no second copy while it is assembled)."""
        if self.expanded is None:
            count = self.bases.shape[0]
            out: Tensor | None = None
            with torch.no_grad():
                for start in range(0, count, chunk):
                    bases = self.bases[start : start + chunk]
                    part = self.pipeline.decode_all(
                        bases, classes=self.classes[start : start + chunk]
                    )
                    per_basis = part.shape[0] // bases.shape[0]
                    if out is None:
                        out = part.new_empty((count * per_basis, *part.shape[1:]))
                    out[start * per_basis : start * per_basis + part.shape[0]] = part
            assert out is not None, "an archive has at least one basis"
            self.expanded = out
        return self.expanded


class HabaDataset(Dataset):
    """Training images expanded from a .haba archive.

    Args:
        path: the archive.
        mode: ``"all-pairs"`` (every basis through every hallucinator, B·K items) or
            ``"random-pair"`` (B items; each basis through one random hallucinator,
            drawn afresh every epoch — the reference code's behaviour).
        seed: with ``random-pair`` and :meth:`set_epoch`, the draw is a function of
            (seed, epoch); without ``set_epoch`` it uses torch's global RNG, which
            DataLoader reseeds in every worker every epoch.
        verify: check every tensor's sha256 and values when the archive is opened.
        cache: keep the decoded images in memory after their first use in a process
            (decoding is deterministic, so this changes speed, not results). ``None``
            (default) caches when the expanded set takes at most 256 MiB; ``False``
            always decodes on the fly, batch by batch.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        mode: str = "all-pairs",
        *,
        seed: int = 0,
        verify: bool = True,
        cache: bool | None = None,
    ) -> None:
        from habactl.format import open_archive

        if mode not in MODES:
            raise HabaError(f"unknown mode {mode!r} (known: {', '.join(MODES)})")
        self.path = Path(path)
        self.mode = mode
        self.seed = seed
        self.verify = verify
        self.epoch: int | None = None
        # Only the header is read here: cheap, and checks the file before any worker starts.
        with open_archive(self.path, verify=verify) as archive:
            self.manifest: dict[str, Any] = archive.manifest  # the parsed JSON
            self.info: Manifest = archive.info  # the same as typed values
        self.num_bases = self.info.bases.count
        self.expansion = self._expansion()
        c, h, w = self.image_shape
        expanded_bytes = self.num_bases * self.expansion * c * h * w * 4
        self.cache = expanded_bytes <= AUTO_CACHE_BYTES if cache is None else bool(cache)
        self._decoded: _Decoded | None = None

    # -- what a training script needs to know -------------------------------------------
    @property
    def classes(self) -> list[str]:
        return list(self.info.classes)

    @property
    def num_classes(self) -> int:
        return len(self.info.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.info.image.shape

    @property
    def soft_labels(self) -> bool:
        return self.info.soft_labels

    @property
    def recommended_lr(self) -> float:
        """The learned learning rate when the objective made one, else the protocol's."""
        training = self.info.training
        if training.learned_lr is not None:
            return float(training.learned_lr)
        return float(training.recommended.lr)

    @property
    def protocol(self) -> dict[str, Any]:
        return self.info.training.recommended.to_json()

    @property
    def recipe(self) -> Recipe:
        """The archive's whole training recipe: network, epochs, batch size, lr (the learned
        one when there is one), momentum, weight decay, schedule, augmentation, loss and
        normalisation, with helpers that build them (see habactl.training.recipe)."""
        return Recipe.from_manifest(self.info)

    def crop_views(self) -> CropViews | None:
        """The archive's per-crop labels (format 1.4), or None: for each stored epoch, a
        crop of every item and the teacher's label for it. Epoch e of training uses
        ``views.apply(images, e, index)`` as the augmentation and ``views.targets(e,
        index)`` as the targets (habactl.training.views); items are numbered as in
        ``all-pairs`` mode."""
        if self.info.crop_epochs is None:
            return None
        if self.mode != "all-pairs":
            raise HabaError("per-crop labels belong to items numbered in all-pairs mode")
        from habactl.format import open_archive
        from habactl.training.views import CropViews

        with open_archive(self.path, verify=self.verify) as archive:
            stored = archive.crop_arrays()
        assert stored is not None, "the manifest names per-crop labels"
        box, mirror, labels = stored
        return CropViews.from_arrays(box, mirror, labels, items=len(self))

    def test_transform(self):
        """The transform real test images in [0, 1] need to match the training images."""
        from habactl.format.normalization import Normalizer

        normalization = self.info.normalization
        zca = self._state().zca if normalization.kind == "zca" else None
        return Normalizer(normalization.to_json(), zca)

    # -- Dataset protocol ----------------------------------------------------------------
    def __len__(self) -> int:
        return self.num_bases * (self.expansion if self.mode == "all-pairs" else 1)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Tensor, Tensor]]:
        images, labels = self.fetch(torch.as_tensor(list(indices), dtype=torch.long))
        return list(zip(images.unbind(0), labels.unbind(0)))

    def fetch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """Decode a batch of items at once: (images (N, C, H, W), labels)."""
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= len(self)):
            raise IndexError(f"index out of range for {len(self)} items")
        state = self._state()
        basis, variant = self._resolve(indices)
        if self.cache:
            images = state.expand_all()[basis * self.expansion + variant]
        else:
            with torch.no_grad():
                images = state.pipeline.decode(
                    state.bases[basis], variant, classes=state.classes[basis]
                )
        return images, state.labels[basis]

    def tensors(self, chunk: int = DECODE_CHUNK) -> tuple[Tensor, Tensor]:
        """The whole expanded data set in one call (all pairs, item order as indexed).

        Decoded `chunk` bases at a time into one preallocated tensor: the peak is the set
        itself plus one chunk's decoding, however many images the archive expands to."""
        count = len(self)
        if self.cache and self.mode == "all-pairs":  # the cached set is already in order
            state = self._state()
            # A copy: the caller may change it; the cache must stay as decoded.
            return state.expand_all(chunk).clone(), state.labels.repeat_interleave(
                self.expansion, dim=0
            )
        step = chunk * (self.expansion if self.mode == "all-pairs" else 1)
        images: Tensor | None = None
        labels: Tensor | None = None
        for start in range(0, count, step):
            part, part_labels = self.fetch(torch.arange(start, min(count, start + step)))
            if images is None or labels is None:
                images = part.new_empty((count, *part.shape[1:]))
                labels = part_labels.new_empty((count, *part_labels.shape[1:]))
            images[start : start + part.shape[0]] = part
            labels[start : start + part.shape[0]] = part_labels
        assert images is not None and labels is not None, "an archive has at least one item"
        return images, labels

    def set_epoch(self, epoch: int) -> None:
        """Make the random-pair draw a function of (seed, epoch), as DistributedSampler does."""
        self.epoch = int(epoch)

    # -- internals -----------------------------------------------------------------------
    def _expansion(self) -> int:
        from habactl.codecs import describe_pipeline

        spec = describe_pipeline(self.info.pipeline_entries(), self.info.bases.shape)
        return int(spec.expansion)

    def _state(self) -> _Decoded:
        # Reopen after a fork: a worker must never share the parent's decoded state lazily
        # built after the fork, and a pickled copy arrives without any.
        if self._decoded is None or self._decoded.pid != os.getpid():
            self._decoded = _Decoded(self.path, self.verify)
        return self._decoded

    def _resolve(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        if self.mode == "all-pairs":
            return indices // self.expansion, indices % self.expansion
        if self.epoch is None:
            variant = torch.randint(self.expansion, (indices.numel(),))
        else:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            table = torch.randint(self.expansion, (self.num_bases,), generator=generator)
            variant = table[indices]
        return indices, variant

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_decoded"] = None  # tensors stay behind; each worker reads the file itself
        return state

    def __repr__(self) -> str:
        c, h, w = self.image_shape
        return (
            f"HabaDataset({str(self.path)!r}, mode={self.mode!r}: {len(self)} items of "
            f"{c}x{h}x{w}, {self.num_classes} classes)"
        )
