"""Teachers: training one, its file, and every way a teacher file can be unusable."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from torch import nn

from habactl.data.opening import open_data
from habactl.teacher import TeacherError, check_teacher_for, load_teacher
from helpers import digits_teacher, tiny_mnist


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "digits.safetensors"
    return digits_teacher(path, epochs=2)


def test_a_teacher_learns_the_data_and_has_batch_norm(teacher):
    training = teacher.info.training
    # Ten classes: chance is 0.1; two epochs on the 8x8 digits reach far above it.
    assert training["test_accuracy"] > 0.5
    assert any(isinstance(m, nn.BatchNorm2d) for m in teacher.net.modules())
    assert not teacher.net.training
    assert not any(p.requires_grad for p in teacher.net.parameters())
    assert teacher.classes == tuple(open_data("digits").classes)
    assert teacher.image_shape == (1, 8, 8)


def test_the_file_gives_back_the_same_network(teacher):
    again = load_teacher(teacher.path)
    images = torch.randn(5, *teacher.image_shape)
    assert torch.equal(teacher.logits(images), again.logits(images))
    assert again.file_bytes == teacher.path.stat().st_size
    assert again.sha256 == teacher.sha256
    described = again.describe()
    assert described["bytes"] == again.file_bytes and described["arch"] == teacher.arch


def test_inputs_take_gradients_through_a_frozen_teacher(teacher):
    images = torch.randn(3, *teacher.image_shape, requires_grad=True)
    teacher.logits(images).sum().backward()
    assert images.grad is not None and bool(images.grad.abs().sum() > 0)
    probs = teacher.probabilities(images.detach(), temperature=4.0)
    assert torch.allclose(probs.sum(1), torch.ones(3))


def test_the_same_seed_trains_the_same_teacher(teacher, tmp_path):
    again = digits_teacher(tmp_path / "again.safetensors", epochs=2)
    assert again.sha256 == teacher.sha256


def test_a_teacher_for_other_classes_is_refused_in_one_line(teacher):
    with pytest.raises(TeacherError, match="knows 10 classes.*the data has 3"):
        check_teacher_for(teacher, tiny_mnist(classes=3))


def test_a_missing_file_is_one_line(tmp_path):
    with pytest.raises(TeacherError, match="no such teacher file"):
        load_teacher(tmp_path / "none.safetensors")


def test_a_file_that_is_not_a_teacher_is_refused(tmp_path):
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"this is not a network")
    with pytest.raises(TeacherError, match="not a"):
        load_teacher(other)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(TeacherError, match="no teacher header"):
        load_teacher(tmp_path / "plain.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "a.haba"), metadata={"haba": "{}"})
    with pytest.raises(TeacherError, match="a .haba archive, not a teacher file"):
        load_teacher(tmp_path / "a.haba")


def _edited(teacher, tmp_path, edit_header=None, edit_tensors=None):
    """A copy of the teacher's file with its header and/or tensors changed."""
    from safetensors.torch import load_file, save_file

    from habactl.teacher.file import METADATA_KEY

    data = teacher.path.read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(json.loads(data[8 : 8 + size])["__metadata__"][METADATA_KEY])
    tensors = load_file(str(teacher.path))
    if edit_header:
        edit_header(header)
    if edit_tensors:
        edit_tensors(tensors)
    path = tmp_path / "edited.safetensors"
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(header)})
    return path


def test_weights_that_do_not_fit_the_architecture_are_refused(teacher, tmp_path):
    path = _edited(teacher, tmp_path, edit_header=lambda h: h["arch"].update(width=2.0))
    with pytest.raises(TeacherError, match="weights do not fit"):
        load_teacher(path)


def test_nan_weights_are_refused(teacher, tmp_path):
    def poison(tensors):
        name = next(k for k, v in tensors.items() if v.is_floating_point())
        tensors[name] = tensors[name].clone().fill_(float("nan"))

    with pytest.raises(TeacherError, match="NaN"):
        load_teacher(_edited(teacher, tmp_path, edit_tensors=poison))


def test_a_newer_teacher_version_is_refused(teacher, tmp_path):
    path = _edited(teacher, tmp_path, edit_header=lambda h: h.update(version=99))
    with pytest.raises(TeacherError, match="version 99"):
        load_teacher(path)
