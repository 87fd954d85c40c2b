"""HabaDataset: what a training script relies on."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch.utils.data import DataLoader

from habactl import HabaDataset, HabaError
from habactl.codecs import Pipeline
from habactl.format import open_archive
from helpers import hallucinate_stage


def decoded_reference(path):
    """Every item decoded the slow, obvious way: basis by basis, hallucinator by hallucinator."""
    with open_archive(path) as archive:
        tensors = archive.tensors()
        manifest = archive.manifest
    pipeline = Pipeline.from_manifest(manifest["pipeline"], tuple(tensors["bases"].shape[1:]))
    pipeline.load_tensors({k: v for k, v in tensors.items() if k.startswith("pipeline.")})
    images, labels = [], []
    with torch.no_grad():
        for b, basis in enumerate(tensors["bases"]):
            for v in range(pipeline.expansion):
                images.append(pipeline.decode(basis[None], torch.tensor([v]))[0])
                labels.append(tensors["labels"][b])
    return torch.stack(images), torch.stack(labels)


@pytest.mark.parametrize("cache", [False, True])
def test_length_and_items_are_every_basis_through_every_hallucinator(make_archive, cache):
    path = make_archive(stages=[hallucinate_stage(count=4)], per_class=2, classes=3)
    dataset = HabaDataset(path, cache=cache)
    assert len(dataset) == 6 * 4
    images, labels = decoded_reference(path)
    for i in (0, 1, 5, 23):
        image, label = dataset[i]
        torch.testing.assert_close(image, images[i], atol=1e-5, rtol=1e-5)
        assert int(label) == int(labels[i]) == i // 4 // 2


@pytest.mark.parametrize("cache", [False, True])
def test_batched_fetch_equals_item_by_item(make_archive, cache):
    dataset = HabaDataset(
        make_archive(stages=[hallucinate_stage(count=3, arch="pixel-affine")]), cache=cache
    )
    indices = [5, 0, 17, 3, 3]
    batch = dataset.__getitems__(indices)
    for index, (image, label) in zip(indices, batch):
        single_image, single_label = dataset[index]
        torch.testing.assert_close(image, single_image, atol=1e-5, rtol=1e-5)
        assert int(label) == int(single_label)


def test_raw_archive_gives_its_bases_back(make_archive):
    path = make_archive(stages=[], per_class=3)
    dataset = HabaDataset(path)
    with open_archive(path) as archive:
        bases = archive.tensor("bases")
    assert len(dataset) == 9
    torch.testing.assert_close(dataset.tensors()[0], bases)


@pytest.mark.parametrize("cache", [False, True])
def test_shuffled_two_worker_dataloader_sees_every_item_once(make_archive, cache):
    path = make_archive(stages=[hallucinate_stage(count=3)], per_class=4)
    dataset = HabaDataset(path, cache=cache)
    expected_images, expected_labels = decoded_reference(path)
    loader = DataLoader(dataset, batch_size=5, shuffle=True, num_workers=2)
    images, labels = map(torch.cat, zip(*loader))
    assert images.shape == expected_images.shape
    assert not torch.equal(labels, expected_labels)  # shuffled...
    assert torch.equal(labels.sort().values, expected_labels.sort().values)  # ...but complete
    # Same multiset of images: compare per-image sums, sorted.
    torch.testing.assert_close(
        images.flatten(1).sum(1).sort().values,
        expected_images.flatten(1).sum(1).sort().values,
        atol=1e-4,
        rtol=1e-4,
    )


def test_pickles_without_tensors(make_archive):
    dataset = HabaDataset(make_archive(stages=[hallucinate_stage()], per_class=50))
    dataset[0]  # decode state exists in this process now
    clone = pickle.loads(pickle.dumps(dataset))
    assert len(pickle.dumps(dataset)) < 20_000
    torch.testing.assert_close(clone[7][0], dataset[7][0])


@pytest.mark.parametrize("cache", [False, True])
def test_random_pair_mode_draws_one_hallucinator_per_basis_per_epoch(make_archive, cache):
    path = make_archive(stages=[hallucinate_stage(count=5)], per_class=20)
    dataset = HabaDataset(path, mode="random-pair", seed=3, cache=cache)
    full = HabaDataset(path)
    assert len(dataset) == 60
    all_images = full.tensors()[0].view(60, 5, -1)

    def variants(epoch: int) -> torch.Tensor:
        dataset.set_epoch(epoch)
        images = dataset.tensors()[0].view(60, 1, -1)
        return ((all_images - images).abs().sum(-1) < 1e-4).float().argmax(1)

    first, again, second = variants(0), variants(0), variants(1)
    assert torch.equal(first, again)
    assert not torch.equal(first, second)
    assert len(set(first.tolist())) > 1


def test_test_transform_and_recommended_lr(make_archive):
    dataset = HabaDataset(make_archive(mean=0.5, std=0.25, learned_lr=0.03))
    real = torch.full((2, 1, 8, 8), 0.75)
    torch.testing.assert_close(dataset.test_transform()(real), torch.ones(2, 1, 8, 8))
    assert dataset.recommended_lr == pytest.approx(0.03)
    assert HabaDataset(make_archive("b.haba")).recommended_lr == pytest.approx(0.01)


def test_bad_input_is_a_haba_error(tmp_path, make_archive):
    with pytest.raises(HabaError):
        HabaDataset(tmp_path / "missing.haba")
    with pytest.raises(HabaError):
        HabaDataset(make_archive(), mode="every-other")
    with pytest.raises(IndexError):
        HabaDataset(make_archive("c.haba"))[10_000]


def test_cache_is_automatic_for_small_sets_and_can_be_turned_off(make_archive):
    path = make_archive(stages=[hallucinate_stage()])
    assert HabaDataset(path).cache is True
    assert HabaDataset(path, cache=False).cache is False


@pytest.mark.parametrize(
    ("cache", "mode"), [(False, "all-pairs"), (False, "random-pair"), (True, "all-pairs")]
)
def test_the_whole_set_is_decoded_a_chunk_of_bases_at_a_time(make_archive, cache, mode):
    """tensors() holds the set plus one chunk's decoding, never the whole set's decoding
    at once (a 1000-class archive decodes to tens of thousands of images)."""
    path = make_archive(stages=[hallucinate_stage(count=3)], per_class=3, classes=3)
    dataset = HabaDataset(path, mode, cache=cache)
    dataset.set_epoch(1)
    state = dataset._state()
    seen: list[int] = []
    for name in ("decode", "decode_all"):
        original = getattr(state.pipeline, name)

        def counted(bases, *args, _original=original, **kwargs):
            seen.append(int(bases.shape[0]))
            return _original(bases, *args, **kwargs)

        setattr(state.pipeline, name, counted)
    images, labels = dataset.tensors(chunk=2)
    # Per decode call: 2 bases, or 2 bases' items when items are decoded one by one.
    chunk_items = 2 * (3 if (mode == "all-pairs" and not cache) else 1)
    assert seen and max(seen) <= chunk_items
    expected = dataset.__getitems__(list(range(len(dataset))))
    assert images.shape[0] == labels.shape[0] == len(dataset)
    for index, (image, label) in enumerate(expected):
        torch.testing.assert_close(images[index], image, atol=1e-5, rtol=1e-5)
        assert int(labels[index]) == int(label)
