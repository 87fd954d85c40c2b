"""`habactl import`: each public layout, rebuilt here from plain tensors with torch.save."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

import habactl.cli.main  # noqa: F401  (registers the subcommands)
from habactl.cli.app import app
from habactl.format import open_archive, storage_account
from habactl.training.dataset import HabaDataset
from helpers import one_error_line

runner = CliRunner()


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def ok(*args: object):
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result


def class_major(classes: int, per_class: int, shape=(3, 8, 8), seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(classes * per_class, *shape, generator=generator)
    return images, torch.arange(classes).repeat_interleave(per_class)


def decoded(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    return HabaDataset(path).tensors()


# --- mtt ------------------------------------------------------------------------------


def test_mtt_files_become_a_raw_archive_with_labels_lr_and_normalisation(tmp_path):
    images, labels = class_major(3, 2)
    torch.save(images, tmp_path / "images_best.pt")
    torch.save(labels, tmp_path / "labels_best.pt")
    torch.save(torch.tensor(0.0123), tmp_path / "syn_lr_best.pt")
    out = tmp_path / "mtt.haba"
    ok(
        "import",
        "mtt",
        tmp_path,
        "--mean",
        "0.1,0.2,0.3",
        "--std",
        "0.5,0.5,0.5",
        "--classes",
        "a,b,c",
        "-o",
        out,
    )
    with open_archive(out) as archive:
        m = archive.manifest
        assert torch.equal(archive.tensor("bases"), images)
        assert torch.equal(archive.tensor("labels"), labels)
    assert m["classes"] == ["a", "b", "c"] and m["pipeline"] == []
    assert m["training"]["learned_lr"] == pytest.approx(0.0123)
    assert m["normalization"] == {"kind": "mean-std", "mean": [0.1, 0.2, 0.3], "std": [0.5] * 3}
    assert m["storage"]["ipc"] == 2 and m["provenance"]["objective"] == "import:mtt"


def test_mtt_learned_logits_become_soft_labels(tmp_path):
    images, _ = class_major(2, 2, shape=(1, 6, 6))
    logits = torch.tensor([[2.0, -1.0], [1.5, 0.0], [-3.0, 1.0], [0.0, 4.0]])
    torch.save(images, tmp_path / "images_best.pt")
    torch.save(logits, tmp_path / "labels_best.pt")
    out = tmp_path / "soft.haba"
    result = ok(
        "import", "mtt", tmp_path / "images_best.pt", tmp_path / "labels_best.pt", "-o", out
    )
    assert "softmax" in result.stderr
    _, labels = decoded(out)
    assert torch.allclose(labels, logits.softmax(dim=1))


def test_mtt_without_labels_or_with_unknown_file_is_one_clear_error(tmp_path):
    images, _ = class_major(2, 1)
    torch.save(images, tmp_path / "images_best.pt")
    line = one_error_line(run("import", "mtt", tmp_path, "-o", tmp_path / "x.haba"))
    assert "labels_best.pt" in line
    torch.save(images, tmp_path / "weird.pt")
    line = one_error_line(
        run(
            "import",
            "mtt",
            tmp_path / "images_best.pt",
            tmp_path / "weird.pt",
            "-o",
            tmp_path / "x.haba",
        )
    )
    assert "weird.pt" in line
    assert not (tmp_path / "x.haba").exists()


def test_unsorted_images_are_put_in_class_order(tmp_path):
    images, labels = class_major(2, 2, shape=(1, 4, 4))
    order = torch.tensor([2, 0, 3, 1])
    torch.save(images[order], tmp_path / "images.pt")
    torch.save(labels[order], tmp_path / "labels.pt")
    out = tmp_path / "sorted.haba"
    result = ok("import", "mtt", tmp_path, "-o", out)
    assert "class order" in result.stderr
    got, got_labels = decoded(out)
    assert torch.equal(got_labels, labels)
    assert torch.equal(got, images[torch.tensor([0, 1, 2, 3])])


# --- safety ---------------------------------------------------------------------------


class Exploit:
    """What a hostile pickle does: unpickling calls open(marker, 'w')."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_that_needs_full_unpickling_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"images": Exploit(marker)}, tmp_path / "images_best.pt")
    torch.save(torch.zeros(1), tmp_path / "labels_best.pt")
    line = one_error_line(run("import", "mtt", tmp_path, "-o", tmp_path / "x.haba"))
    assert "images_best.pt" in line and "full unpickling" in line and "open" in line
    assert not marker.exists()
    assert not (tmp_path / "x.haba").exists()
    for kind in ("dc", "idc", "npz"):
        one_error_line(run("import", kind, tmp_path / "images_best.pt", "-o", tmp_path / "x.haba"))
        assert not marker.exists()
    # The fixture is live: a full unpickle would have run it.
    torch.load(tmp_path / "images_best.pt", weights_only=False)
    assert marker.exists()


def test_an_npz_with_object_arrays_is_refused(tmp_path):
    path = tmp_path / "mine.npz"
    np.savez(path, images=np.array([object()], dtype=object), labels=np.zeros(1))
    line = one_error_line(run("import", "npz", path, "-o", tmp_path / "x.haba"))
    assert "mine.npz" in line


# --- haba-official ----------------------------------------------------------------------


class AuthorsHallucinator(nn.Module):
    """The authors' architecture, written out plainly: Conv2d, per-pixel affine,
    ConvTranspose2d; its state dict has their key names."""

    def __init__(self, channels: int, hidden: int, size: int, kernel: int) -> None:
        super().__init__()
        inner = size - kernel + 1
        self.enc = nn.Conv2d(channels, hidden, kernel)
        self.scale = nn.Parameter(1.0 + 0.3 * torch.randn(1, hidden, inner, inner))
        self.shift = nn.Parameter(0.3 * torch.randn(1, hidden, inner, inner))
        self.dec = nn.ConvTranspose2d(hidden, channels, kernel)

    def forward(self, x):
        return self.dec(self.scale * self.enc(x) + self.shift)


def haba_files(tmp_path: Path, count=3, classes=2, per_class=2, channels=3, size=8):
    torch.manual_seed(1)
    styles = nn.ModuleList(AuthorsHallucinator(channels, 3, size, 3) for _ in range(count))
    bases, _ = class_major(classes, per_class, shape=(channels, size, size), seed=2)
    torch.save(bases, tmp_path / "images_best.pt")
    torch.save(styles.state_dict(), tmp_path / "weights_best.pt")
    return bases, styles


def test_haba_official_decodes_exactly_as_the_authors_hallucinators(tmp_path):
    bases, styles = haba_files(tmp_path)
    assert set(styles.state_dict()) >= {"0.enc.weight", "0.scale", "2.dec.bias"}
    out = tmp_path / "haba.haba"
    ok(
        "import",
        "haba-official",
        tmp_path / "images_best.pt",
        tmp_path / "weights_best.pt",
        "--classes",
        "cat,dog",
        "--mean",
        "0.5,0.5,0.5",
        "--std",
        "0.2,0.2,0.2",
        "-o",
        out,
    )
    images, labels = decoded(out)
    with torch.no_grad():
        expected = torch.stack(
            [styles[v](bases[b : b + 1])[0] for b in range(len(bases)) for v in range(len(styles))]
        )
    assert images.shape == expected.shape == (12, 3, 8, 8)
    assert torch.allclose(images, expected, atol=1e-5)
    assert torch.equal(labels, torch.tensor([0] * 6 + [1] * 6))
    with open_archive(out) as archive:
        manifest = archive.manifest
    assert manifest["pipeline"][0]["configuration"] == {
        "arch": "pixel-affine",
        "count": 3,
        "hidden": 3,
        "kernel": 3,
    }
    account = storage_account(manifest)
    # Their claim: 2 bases per class. The true account adds the hallucinators.
    per_style = 2 * 3 * 3 * 9 + 3 + 3 + 2 * 3 * 6 * 6
    assert manifest["storage"] == {"ipc": 2, "counts": "bases", "budget_values": 2 * 2 * 192}
    assert account.stored_values == bases.numel() + 3 * per_style
    assert account.claim_ratio == 1.0 and account.ratio > 1.5


def test_haba_official_with_a_claimed_ipc_counts_everything(tmp_path):
    haba_files(tmp_path)
    out = tmp_path / "claimed.haba"
    result = ok(
        "import", "haba-official", tmp_path, "--classes", "cat,dog", "--ipc", "5", "-o", out
    )
    with open_archive(out) as archive:
        assert archive.manifest["storage"]["counts"] == "all"
    assert "ipc 5" in result.stderr


def test_haba_official_refuses_the_single_channel_variant_and_needs_classes(tmp_path):
    torch.manual_seed(0)
    hall = AuthorsHallucinator(3, 3, 8, 3)
    hall.enc = nn.Conv2d(1, 3, 3)
    torch.save(torch.randn(2, 1, 8, 8), tmp_path / "images_best.pt")
    torch.save(nn.ModuleList([hall]).state_dict(), tmp_path / "weights_best.pt")
    line = one_error_line(
        run("import", "haba-official", tmp_path, "--classes", "a,b", "-o", tmp_path / "x.haba")
    )
    assert "weights_best.pt" in line and "channel" in line
    line = one_error_line(run("import", "haba-official", tmp_path, "-o", tmp_path / "x.haba"))
    assert "--classes" in line


# --- dc -------------------------------------------------------------------------------


def test_dc_res_file_picks_the_experiment(tmp_path):
    first, labels = class_major(2, 2, shape=(1, 6, 6), seed=0)
    second, _ = class_major(2, 2, shape=(1, 6, 6), seed=1)
    path = tmp_path / "res_DM_MNIST_ConvNet_2ipc.pt"
    torch.save(
        {"data": [[first, labels], [second, labels]], "accs_all_exps": {"ConvNet": [0.5, 0.6]}},
        path,
    )
    ok("import", "dc", path, "--experiment", "0", "-o", tmp_path / "e0.haba")
    ok("import", "dc", path, "-o", tmp_path / "last.haba")
    assert torch.equal(decoded(tmp_path / "e0.haba")[0], first)
    assert torch.equal(decoded(tmp_path / "last.haba")[0], second)
    line = one_error_line(run("import", "dc", path, "--experiment", "2", "-o", tmp_path / "x.haba"))
    assert "--experiment 2" in line and "0 to 1" in line


# --- idc ------------------------------------------------------------------------------


def idc_decode(images, targets, factor, mean, std):
    """IDC's multi-formation decode, written from its description: per class, crop
    position by crop position, each crop resized back with bilinear interpolation."""
    size = images.shape[-1]
    s = size // factor
    out, out_labels = [], []
    for c in targets.unique().tolist():
        block = images[targets == c]
        crops = [
            block[:, :, i * s : (i + 1) * s, j * s : (j + 1) * s]
            for i in range(factor)
            for j in range(factor)
        ]
        out.append(F.interpolate(torch.cat(crops), size=size, mode="bilinear", align_corners=False))
        out_labels.append(torch.full((len(block) * factor * factor,), c))
    decoded_images = torch.cat(out)
    normalised = (decoded_images - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(
        1, -1, 1, 1
    )
    return normalised, torch.cat(out_labels)


def test_idc_multi_formation_decodes_as_idc_does(tmp_path):
    images, targets = class_major(2, 3, shape=(3, 8, 8))
    images = images.sigmoid()  # IDC stores pixels in [0, 1]
    torch.save([images, targets], tmp_path / "data.pt")
    out = tmp_path / "idc.haba"
    ok(
        "import",
        "idc",
        tmp_path / "data.pt",
        "--factor",
        "2",
        "--mean",
        "0.4,0.5,0.6",
        "--std",
        "0.2,0.25,0.3",
        "--ipc",
        "3",
        "-o",
        out,
    )
    got, labels = decoded(out)
    expected, expected_labels = idc_decode(images, targets, 2, [0.4, 0.5, 0.6], [0.2, 0.25, 0.3])
    assert got.shape == (24, 3, 8, 8)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.equal(labels, expected_labels)
    with open_archive(out) as archive:
        m = archive.manifest
    assert m["pipeline"] == [
        {"name": "upsample", "version": 1, "configuration": {"factor": 2, "mode": "bilinear"}}
    ]
    assert m["bases"]["shape"] == [3, 4, 4]
    assert storage_account(m).ratio == 1.0  # same storage as 3 images per class


def test_idc_factor_that_does_not_divide_the_image_is_refused(tmp_path):
    images, targets = class_major(2, 1, shape=(1, 28, 28))
    torch.save([images, targets], tmp_path / "data.pt")
    line = one_error_line(
        run("import", "idc", tmp_path / "data.pt", "--factor", "3", "-o", tmp_path / "x.haba")
    )
    assert "--factor 3" in line and "28x28" in line


def test_idc_without_factor_normalises_the_pixels(tmp_path):
    images, targets = class_major(2, 1, shape=(1, 4, 4))
    torch.save((images.sigmoid(), targets), tmp_path / "data.pt")
    ok(
        "import",
        "idc",
        tmp_path / "data.pt",
        "--mean",
        "0.5",
        "--std",
        "0.25",
        "-o",
        tmp_path / "a.haba",
    )
    got, _ = decoded(tmp_path / "a.haba")
    assert torch.allclose(got, (images.sigmoid() - 0.5) / 0.25, atol=1e-6)


# --- npz, presets, training -------------------------------------------------------------


def test_npz_and_safetensors_arrays(tmp_path):
    from safetensors.torch import save_file

    images, labels = class_major(2, 2, shape=(1, 4, 4))
    pixels = (images.sigmoid() * 255).round().to(torch.uint8)
    np.savez(
        tmp_path / "mine.npz", images=pixels.numpy(), labels=labels.numpy(), lr=np.float32(0.05)
    )
    ok(
        "import",
        "npz",
        tmp_path / "mine.npz",
        "--mean",
        "0.5",
        "--std",
        "0.5",
        "-o",
        tmp_path / "n.haba",
    )
    got, _ = decoded(tmp_path / "n.haba")
    assert torch.allclose(got, (pixels.float() / 255 - 0.5) / 0.5, atol=1e-6)
    assert HabaDataset(tmp_path / "n.haba").recommended_lr == pytest.approx(0.05)
    save_file({"images": images, "labels": labels}, tmp_path / "mine.safetensors")
    ok("import", "npz", tmp_path / "mine.safetensors", "-o", tmp_path / "s.haba")
    assert torch.equal(decoded(tmp_path / "s.haba")[0], images)


@pytest.mark.parametrize(("kind", "mean"), [("mtt", 0.4914), ("dc", 0.5071)])
def test_cifar100_preset_uses_each_codebases_statistics(tmp_path, kind, mean):
    images, labels = class_major(100, 1, shape=(3, 32, 32))
    if kind == "mtt":
        torch.save(images, tmp_path / "images_best.pt")
        torch.save(labels, tmp_path / "labels_best.pt")
        files = [tmp_path]
    else:
        torch.save({"data": [[images, labels]]}, tmp_path / "res.pt")
        files = [tmp_path / "res.pt"]
    out = tmp_path / "c100.haba"
    ok("import", kind, *files, "--dataset", "CIFAR-100", "-o", out)
    with open_archive(out) as archive:
        m = archive.manifest
    assert m["normalization"]["mean"][0] == mean
    assert m["classes"][:3] == ["apple", "aquarium_fish", "baby"] and len(m["classes"]) == 100


def test_a_preset_of_another_image_size_is_refused(tmp_path):
    images, labels = class_major(10, 1, shape=(1, 8, 8))
    torch.save(images, tmp_path / "images_best.pt")
    torch.save(labels, tmp_path / "labels_best.pt")
    line = one_error_line(
        run("import", "mtt", tmp_path, "--dataset", "mnist", "-o", tmp_path / "x.haba")
    )
    assert "mnist" in line and "[1, 28, 28]" in line


def test_imported_archives_train_through_haba_dataset(tmp_path):
    bases, _ = haba_files(tmp_path, count=2, classes=2, per_class=4, channels=1, size=8)
    out = tmp_path / "train.haba"
    ok(
        "import",
        "haba-official",
        tmp_path,
        "--classes",
        "a,b",
        "--mean",
        "0.5",
        "--std",
        "0.5",
        "-o",
        out,
    )
    dataset = HabaDataset(out)
    assert len(dataset) == 16
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, shuffle=True)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    optimiser = torch.optim.SGD(net.parameters(), lr=0.05)
    losses = []
    for _ in range(30):
        for images, labels in loader:
            loss = F.cross_entropy(net(images), labels)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
    assert math.isfinite(losses[-1]) and sum(losses[-4:]) < sum(losses[:4])


def test_existing_output_is_kept_without_force(tmp_path):
    images, labels = class_major(2, 1, shape=(1, 4, 4))
    torch.save(images, tmp_path / "images_best.pt")
    torch.save(labels, tmp_path / "labels_best.pt")
    out = tmp_path / "a.haba"
    out.write_bytes(b"keep")
    line = one_error_line(run("import", "mtt", tmp_path, "-o", out))
    assert "--force" in line and out.read_bytes() == b"keep"
    ok("import", "mtt", tmp_path, "-o", out, "--force")
    assert open_archive(out).manifest["bases"]["count"] == 2
