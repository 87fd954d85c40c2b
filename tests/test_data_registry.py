"""load_source dispatch: names, aliases, paths, options, unknown specs."""

from __future__ import annotations

import numpy as np
import pytest

import habactl.data as data
from habactl.data import DataError, available_sources, load_source
from habactl.errors import HabaError


def test_public_api():
    assert set(data.__all__) == {
        "DataError",
        "DataSource",
        "LabeledImages",
        "available_sources",
        "load_source",
    }
    assert issubclass(DataError, HabaError)


def test_available_sources():
    assert available_sources() == [
        "mnist-5k",
        "digits",
        "mnist",
        "fashion-mnist",
        "kmnist",
        "cifar10",
        "cifar100",
        "svhn",
    ]


def test_unknown_name_lists_the_sources():
    with pytest.raises(DataError, match=r"unknown data source 'imagenet'.*mnist-5k, digits, mnist"):
        load_source("imagenet")


def test_aliases_resolve_to_canonical_names():
    assert load_source("MNIST5K").name == "mnist-5k"


def test_embedded_takes_no_options():
    with pytest.raises(DataError, match=r"mnist-5k: unknown option\(s\) images_key"):
        load_source("mnist-5k", images_key="x")


def test_path_dispatch(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "a.npz",
        images=rng.integers(0, 256, (10, 4, 4), dtype=np.uint8),
        labels=np.repeat([0, 1], 5),
    )
    (tmp_path / "a.npz").rename(tmp_path / "a.NPZ")  # suffixes match case-insensitively
    assert load_source(tmp_path / "a.NPZ").name == "a.NPZ"
    with pytest.raises(DataError, match="no such file"):
        load_source(str(tmp_path / "missing.h5"))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="unsupported file type"):
        load_source(str(tmp_path / "notes.txt"))
    with pytest.raises(DataError, match=r"unknown option\(s\) colour"):
        load_source(str(tmp_path / "a.NPZ"), colour=True)


def test_a_folder_named_like_a_source_needs_a_path_prefix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits").mkdir()
    assert load_source("digits").name == "digits"  # the registry wins
    with pytest.raises(DataError, match="no class folders"):
        load_source("./digits")
