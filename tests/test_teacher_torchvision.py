"""A torchvision ResNet state dict as a teacher: read without unpickling code, its network
inferred from the keys, its classes and input space taken from the data it meets."""

from __future__ import annotations

import io
import os
import socket
from types import SimpleNamespace

import pytest
import torch
import torchvision

from habactl.teacher import (
    Teacher,
    TeacherError,
    TeacherInfo,
    bind_teacher,
    check_teacher_for,
    load_teacher,
)

pytestmark = pytest.mark.usefixtures("one_thread")
CLASSES = 4


def data(shape=(3, 32, 32), classes=CLASSES):
    """What a teacher reads of a data source: classes, image shape, mean and std."""
    channels, height, width = shape
    return SimpleNamespace(
        name="toy",
        fingerprint="sha256:" + "cd" * 32,
        classes=[f"kind-{k}" for k in range(classes)],
        channels=channels,
        height=height,
        width=width,
        mean=lambda: [0.5] * channels,
        std=lambda: [0.25] * channels,
    )


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=CLASSES)
    with torch.no_grad():  # running statistics other than the defaults: they must load too
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return net.eval()


@pytest.fixture(scope="module")
def pth(resnet, tmp_path_factory):
    path = tmp_path_factory.mktemp("torchvision") / "resnet18.pth"
    torch.save(resnet.state_dict(), path)
    return path


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_a_state_dict_loads_as_the_network_it_was_saved_from(resnet, pth, no_network):
    teacher = load_teacher(pth)
    assert teacher.arch == "torchvision-resnet18"
    assert teacher.file_bytes == pth.stat().st_size
    assert not teacher.net.training
    assert not any(p.requires_grad for p in teacher.net.parameters())
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(teacher.logits(images), resnet(images))


def test_the_data_gives_its_classes_shape_and_normalisation(pth):
    teacher = load_teacher(pth)
    source = data(shape=(3, 40, 36))
    note = check_teacher_for(teacher, source)
    assert note is not None and "state dict" in note
    assert teacher.classes == tuple(source.classes)
    assert teacher.image_shape == (3, 40, 36)
    assert teacher.normalization == {"kind": "mean-std", "mean": [0.5] * 3, "std": [0.25] * 3}
    assert teacher.describe()["arch"] == "torchvision-resnet18"
    assert teacher.logits(torch.randn(2, 3, 40, 36)).shape == (2, CLASSES)


def test_an_archives_classes_and_space_bind_a_state_dict_and_no_other_teacher(pth):
    teacher = load_teacher(pth)
    space = {"kind": "mean-std", "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}
    names = ["a", "b", "c", "d"]
    note = bind_teacher(teacher, classes=names, image_shape=(3, 32, 32), normalization=space)
    assert note is not None and "state dict" in note
    assert teacher.classes == tuple(names) and teacher.normalization == space
    own = TeacherInfo(
        arch="convnet", width=1.0, norm="batch", classes=("x", "y"), image_shape=(1, 8, 8),
        normalization={"kind": "none"}, dataset={"name": "toy", "fingerprint": None}, training={},
    )  # fmt: skip
    trained = Teacher(torch.nn.Linear(2, 2), own, 0, "")
    assert (
        bind_teacher(trained, classes=names, image_shape=(3, 32, 32), normalization=space) is None
    )
    assert trained.info == own


@pytest.mark.parametrize(
    ("source", "said"),
    [
        (data(classes=5), "4 outputs; the data has 5 classes"),
        (data(shape=(3, 16, 16)), "at least 32x32"),
        (data(shape=(1, 32, 32)), "RGB images"),
    ],
)
def test_data_the_network_cannot_read_is_refused_in_one_line(pth, source, said):
    with pytest.raises(TeacherError, match=said) as caught:
        check_teacher_for(load_teacher(pth), source)
    assert "\n" not in str(caught.value)


class Hostile:
    """An object whose unpickling would run a command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_and_never_run(tmp_path, resnet):
    marker = tmp_path / "ran"
    path = tmp_path / "hostile.pth"
    torch.save({**resnet.state_dict(), "extra": Hostile(marker)}, path)
    with pytest.raises(TeacherError, match="refused: it holds more than tensors") as caught:
        load_teacher(path)
    assert "\n" not in str(caught.value) and "posix.system" in str(caught.value)
    assert not marker.exists()


def test_wrapped_and_prefixed_state_dicts_and_safetensors_load(resnet, tmp_path):
    from safetensors.torch import save_file

    state = resnet.state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "a.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "b.safetensors"))
    legacy = tmp_path / "c.pth"
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = resnet(images)
    for name in ("a.pth", "b.safetensors", "c.pth"):
        teacher = load_teacher(tmp_path / name)
        assert teacher.arch == "torchvision-resnet18", name
        assert torch.equal(teacher.logits(images), expected), name


def test_other_state_dicts_are_refused_in_one_line(resnet, tmp_path):
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(TeacherError, match="nor a torchvision ResNet state dict"):
        load_teacher(tmp_path / "other.pth")
    state = dict(resnet.state_dict())
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)  # one input channel: not torchvision's
    torch.save(state, tmp_path / "gray.pth")
    with pytest.raises(TeacherError, match="weights do not fit torchvision-resnet18"):
        load_teacher(tmp_path / "gray.pth")
    (tmp_path / "list.pth").write_bytes(_saved([torch.zeros(2)]))
    with pytest.raises(TeacherError, match="not a state dict"):
        load_teacher(tmp_path / "list.pth")
    (tmp_path / "cut.pth").write_bytes(_saved(resnet.state_dict())[:5000])
    with pytest.raises(TeacherError, match="refused: not a readable torch file") as caught:
        load_teacher(tmp_path / "cut.pth")
    assert "\n" not in str(caught.value)


def _saved(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def test_relabel_takes_a_state_dict_as_its_teacher(pth, resnet, make_archive, tmp_path):
    """The state dict reads the archive's classes and space; the labels are its outputs."""
    from habactl.format import open_archive
    from habactl.labels import relabel

    archive = make_archive(shape=(3, 32, 32), classes=CLASSES, per_class=1)
    out = tmp_path / "relabelled.haba"
    relabel(archive, pth, out, form="float32", allow_over=True)
    with open_archive(out) as opened:
        labels = opened.labels()
        bases = opened.tensors()["bases"]
    with torch.no_grad():
        expected = resnet(bases).softmax(dim=1)
    assert labels.shape == (CLASSES, CLASSES)
    torch.testing.assert_close(labels, expected, atol=1e-4, rtol=1e-4)
