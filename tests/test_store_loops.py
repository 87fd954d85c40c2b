"""The loops on a prepared store: compress (dm, dc, dsa, mtt, random), evaluate, experts
and the ZCA import read only the images they use, never the whole set; a store's
fingerprint is what archives record and what evaluate compares; a large set is not
loaded into memory by surprise; memory stays flat as the set grows."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import habactl.cli.main  # noqa: F401  (registers the subcommands)
from habactl.cli.app import app
from habactl.data.opening import estimate_bytes, open_data
from habactl.data.stored import StoredSource, StoreFile, open_stored
from habactl.distill import DistillConfig, Distiller
from habactl.distill.sets import iteration_classes
from habactl.format import open_archive
from habactl.store import open_store, write_store
from helpers import (
    TOLERANCE,
    TORCHRUN,
    habactl_peak_kib,
    one_error_line,
    run_habactl,
    stored_tensors,
)

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["ant", "bee", "cat", "dog"]


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def ok(*args):
    done = run(*args)
    assert done.exit_code == 0, done.output
    return done


def pixels(classes: int, per_class: int, size: int, seed: int):
    """Class-sorted uint8 images with a class signal: (N, 3, size, size), labels."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    centres = rng.integers(40, 216, size=(classes, 3, 1, 1))
    noise = rng.integers(-40, 41, size=(len(labels), 3, size, size))
    return (centres[labels] + noise).clip(0, 255).astype(np.uint8), labels


def make_store(path: Path, classes=4, per_class=20, size=16, test_per_class=5, seed=0) -> Path:
    names = CLASSES if classes == len(CLASSES) else [f"c{k}" for k in range(classes)]
    return write_store(
        path,
        name="toy",
        classes=names,
        train=pixels(classes, per_class, size, seed),
        test=pixels(classes, test_per_class, size, seed + 1),
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A store and an .npz of the very same pixels (both class-sorted)."""
    folder = tmp_path_factory.mktemp("store-loops")
    make_store(folder / "toy.store")
    (x, y), (tx, ty) = pixels(4, 20, 16, 0), pixels(4, 5, 16, 1)
    np.savez(folder / "toy.npz", x_train=x, y_train=y, x_test=tx, y_test=ty,
             classes=np.array(CLASSES))  # fmt: skip
    return folder


# -- reading ------------------------------------------------------------------------


def test_reads_by_index_match_the_store_in_any_order_with_repeats(data):
    store = open_store(data / "toy.store")
    file = StoreFile(store.path / "train.u8", store.count("train"), store.image_shape)
    wanted = [7, 3, 4, 5, 79, 3, 0, 6]
    np.testing.assert_array_equal(file.rows(wanted), store.images("train")[wanted])
    np.testing.assert_array_equal(file.range(10, 14), store.images("train")[10:14])
    with pytest.raises(IndexError):
        file.rows([80])


def test_a_store_opens_as_a_source_with_the_stores_statistics_and_fingerprint(data):
    source = open_data(str(data / "toy.store"))
    store = open_store(data / "toy.store")
    assert isinstance(source, StoredSource)
    assert source.fingerprint == store.fingerprint and source.classes == CLASSES
    assert source.mean() == store.mean and source.std() == store.std
    assert source.image_shape == (3, 16, 16) and len(source.train) == 80
    in_memory = open_data(str(data / "toy.npz"))
    # the same pixels: the images a store reads equal those the .npz loads
    picks = torch.tensor([0, 19, 40, 79])
    assert torch.equal(source.train.images[picks], in_memory.train.images[picks])
    assert torch.equal(source.test.images[2:6], in_memory.test.images[2:6])


# -- compress -----------------------------------------------------------------------


def test_compress_reads_the_store_with_every_objective(data, tmp_path):
    common = ["--ipc", "1", "--iterations", "2", "--real-per-class", "4", "--threads", "1"]
    for objective in ("dm", "dc", "dsa"):
        out = tmp_path / f"{objective}.haba"
        done = run("compress", data / "toy.store", "--objective", objective, *common,
                   "-q", "-o", out)  # fmt: skip
        assert done.exit_code == 0, done.output
        provenance = open_archive(out).manifest["provenance"]
        assert provenance["dataset"] == {
            "name": "toy",
            "fingerprint": open_store(data / "toy.store").fingerprint,
        }
        assert provenance["hyperparameters"]["real_images"] == "store"
    buffer = tmp_path / "experts"
    done = run("experts", data / "toy.store", "-o", buffer, "--experts", "1", "--epochs", "2",
               "--threads", "1", "-q")  # fmt: skip
    assert done.exit_code == 0, done.output
    done = run("compress", data / "toy.store", "--objective", "mtt", "--experts", buffer,
               "--iterations", "2", "--syn-steps", "2", "--expert-epochs", "1",
               "--threads", "1", "-q", "-o", tmp_path / "mtt.haba")  # fmt: skip
    assert done.exit_code == 0, done.output
    done = run("compress", data / "toy.store", "--objective", "random", "--ipc", "2", "-q",
               "-o", tmp_path / "random.haba")  # fmt: skip
    assert done.exit_code == 0, done.output
    assert open_archive(tmp_path / "random.haba").manifest["bases"]["per_class"] == [2] * 4


def test_the_default_archive_name_drops_the_stores_suffix(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    done = run("compress", data / "toy.store", "--objective", "random", "-q")
    assert done.exit_code == 0, done.output
    assert (tmp_path / "toy.haba").is_file()


def config(**changes) -> DistillConfig:
    settings = {"real_per_class": 3}
    return DistillConfig(
        objective=changes.pop("objective", "dm"),
        objective_settings=settings,
        codec="raw",
        iterations=changes.pop("iterations", 4),
        augment="none",
        checkpoint_every=changes.pop("checkpoint_every", 100),
        **changes,
    )


def test_the_real_side_reads_what_it_samples_and_nothing_more_ahead_of_time(data, tmp_path):
    source = open_stored(data / "toy.store")
    distiller = Distiller(source, config(iterations=4, classes_per_iteration=2))
    file = source.train.file
    reads: list[tuple[list[int], str]] = []
    plain = file.rows

    def counted(indices):
        reads.append((sorted(int(i) for i in indices), threading.current_thread().name))
        return plain(indices)

    file.rows = counted  # type: ignore[method-assign]
    file.range = None  # type: ignore[assignment]  # a whole class read would fail
    distiller.run(tmp_path / "a.haba")
    assert len(reads) == 4  # one read per iteration, none past the last
    offsets, counts = source.train.offsets, source.train.counts
    for iteration, (indices, thread) in enumerate(reads):
        assert thread.startswith("habactl-read-ahead")  # read in the background
        classes = iteration_classes(0, iteration, 4, 2)
        assert len(indices) == 2 * 3  # 3 images of each of the iteration's 2 classes
        owners = [k for i in indices for k in range(4) if offsets[k] <= i < offsets[k] + counts[k]]
        assert sorted(set(owners)) == classes and len(set(indices)) == len(indices)


def test_a_store_run_is_reproducible_and_records_the_classes_per_iteration(
    data, tmp_path, monkeypatch
):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    paths = []
    for name in ("a.haba", "b.haba"):
        source = open_stored(data / "toy.store")
        paths.append(Distiller(source, config(classes_per_iteration=3)).run(tmp_path / name).path)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    hyper = open_archive(paths[0]).manifest["provenance"]["hyperparameters"]
    assert hyper["classes_per_iteration"] == 3


def test_a_resumed_store_run_writes_the_archive_of_an_uninterrupted_one(
    data, tmp_path, monkeypatch
):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    settings = config(iterations=4, checkpoint_every=2, classes_per_iteration=3)
    whole = Distiller(open_stored(data / "toy.store"), settings).run(tmp_path / "whole.haba")
    stopped = Distiller(open_stored(data / "toy.store"), settings)
    step = stopped.step

    def failing_step():
        if stopped.iteration == 3:
            raise RuntimeError("stop")
        return step()

    stopped.step = failing_step  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="stop"):
        stopped.run(tmp_path / "part.haba")
    assert (tmp_path / "part.haba.ckpt").is_file()
    again = Distiller(open_stored(data / "toy.store"), settings)
    resumed = again.run(tmp_path / "part.haba", resume=True)
    assert resumed.resumed_from == 2
    assert resumed.path.read_bytes() == whole.path.read_bytes()


@pytest.mark.parametrize("stored", [False, True], ids=["in-memory", "store"])
def test_classes_outside_an_iterations_draw_keep_their_bases(data, tmp_path, stored):
    source = open_data(str(data / ("toy.store" if stored else "toy.npz")))
    before = Distiller(source, config(iterations=0)).run(tmp_path / "0.haba").path
    after = Distiller(source, config(iterations=1, classes_per_iteration=2)).run(
        tmp_path / "1.haba"
    )
    start = open_archive(before).tensor("bases")
    end = open_archive(after.path).tensor("bases")
    changed = [k for k in range(4) if not torch.equal(start[k], end[k])]
    assert changed == iteration_classes(0, 0, 4, 2)


@pytest.mark.parametrize("mask", ["shared", "per-class"])
def test_streamed_passes_give_what_the_whole_set_in_memory_gives(data, mask):
    # The planner's class spread and the frequency stage's mask, streamed class by class,
    # against the in-memory computations on the same normalised images.
    from habactl.distill import engine, stored

    source = open_stored(data / "toy.store")
    distiller = Distiller(source, config(iterations=0, frequency=20, frequency_mask=mask))
    images = distiller.normalize(source.train.images[:])
    labels = source.train.labels
    streamed = stored.class_spread(source, distiller.normalize)
    # exact integer sums against float32 pixels: equal to float32's precision
    assert streamed == pytest.approx(engine.class_spread(images, labels, 4), rel=1e-5)
    fitted = next(s for s in distiller.synthetic.pipeline.stages if s.name == "frequency")
    fresh = fitted.from_config(fitted.to_config(), fitted.in_shape)
    fresh.fit(images, labels)
    assert torch.equal(fitted.get_buffer("mask"), fresh.get_buffer("mask"))


def test_recomputing_the_synthetic_sides_activations_changes_no_value(monkeypatch):
    from habactl.distill.objectives import base, dm
    from habactl.nets import seeded

    net = seeded.build("convnet", (3, 16, 16), 4, device=torch.device("cpu"),
                       generator=torch.Generator().manual_seed(0), trainable=False)  # fmt: skip
    images = torch.randn(70, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    results = []
    for bound in (base.RECOMPUTE_ABOVE, 0):  # kept as usual; recomputed
        monkeypatch.setattr(base, "RECOMPUTE_ABOVE", bound)
        x = images.clone().requires_grad_(True)
        out = dm._embed_recomputed(net, x, 32)
        (grad,) = torch.autograd.grad(out.square().sum(), x)
        results.append((out.detach(), grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_classes_per_iteration_mistakes_are_one_line(data, tmp_path):
    store, a, b = data / "toy.store", tmp_path / "a.haba", tmp_path / "b.haba"
    line = one_error_line(run("compress", store, "--classes-per-iteration", "5", "-o", a))
    assert "--classes-per-iteration 5 is more than the data set's 4 classes" in line
    line = one_error_line(
        run("compress", store, "--objective", "random", "--classes-per-iteration", "2", "-o", b)
    )
    assert "--classes-per-iteration does not apply to --objective random" in line


def test_in_memory_runs_are_unchanged_by_the_store_path(tmp_path):
    # The default objective on digits, all classes: the sampling and the chunks of the
    # real side are those of before, so the seed gives the archive it always gave.
    from habactl.data import load_source

    source = load_source("digits")
    distiller = Distiller(source, DistillConfig(iterations=1, codec="raw", augment="none"))
    assert distiller.real.matched() == list(range(10))
    assert "real_images" not in distiller.hyperparameters
    assert "classes_per_iteration" not in distiller.hyperparameters


# -- evaluate -----------------------------------------------------------------------


def evaluation(archive: Path, data_spec: Path, *extra) -> dict:
    done = run("evaluate", archive, "--data", data_spec, "--epochs", "2", "--models", "1",
               "--jobs", "1", "--json", "-q", *extra)  # fmt: skip
    assert done.exit_code == 0, done.output
    return json.loads(done.stdout)


def test_evaluate_on_a_store_gives_the_numbers_of_the_same_pixels_in_memory(data, tmp_path):
    archive = tmp_path / "r.haba"
    ok("compress", data / "toy.npz", "--objective", "random", "-q", "-o", archive)
    extra = ("--baseline", "full,random", "--full-epochs", "1")
    from_npz = evaluation(archive, data / "toy.npz", *extra)
    from_store = evaluation(archive, data / "toy.store", *extra)
    accuracies = from_npz["results"]["convnet"]["accuracies"]
    assert from_store["results"]["convnet"]["accuracies"] == accuracies
    for name in ("full", "random"):
        store_arm, npz_arm = from_store["baselines"][name], from_npz["baselines"][name]
        assert store_arm["training_images"] == npz_arm["training_images"]
        assert (
            store_arm["results"]["convnet"]["accuracies"]
            == npz_arm["results"]["convnet"]["accuracies"]
        )
    assert from_store["data"]["test_images"] == 20
    # made from the .npz: the store's fingerprint is another one, and evaluate says so
    assert not from_store["data"]["matches_archive"] and from_store["warnings"]


def test_evaluate_compares_the_stores_fingerprint_and_refuses_other_classes(data, tmp_path):
    archive = tmp_path / "s.haba"
    ok("compress", data / "toy.store", "--objective", "random", "-q", "-o", archive)
    result = evaluation(archive, data / "toy.store")
    assert result["data"]["matches_archive"] and not result["warnings"]
    assert result["data"]["fingerprint"] == open_store(data / "toy.store").fingerprint
    other = write_store(tmp_path / "other.store", name="toy", classes=["ant", "bee", "cow", "dog"],
                        train=pixels(4, 20, 16, 0), test=pixels(4, 5, 16, 1))  # fmt: skip
    line = one_error_line(run("evaluate", archive, "--data", other, "--epochs", "1", "-q"))
    assert "other classes than the archive (class 2 is 'cow' there, 'cat' in the archive)" in line


# -- experts and ZCA ----------------------------------------------------------------


def test_experts_read_each_batch_from_the_store_in_ascending_order(data, tmp_path):
    from habactl.experts import ExpertSettings, train_experts

    source = open_stored(data / "toy.store")
    reads: list[list[int]] = []
    plain = source.train.file.rows

    def counted(indices):
        reads.append([int(i) for i in indices])
        return plain(indices)

    source.train.file.rows = counted  # type: ignore[method-assign]
    settings = ExpertSettings(experts=1, epochs=2, batch_size=32, width=0.125, device="cpu")
    index = train_experts(source, tmp_path / "buffer", settings)
    assert index.dataset.fingerprint == source.fingerprint
    assert [len(r) for r in reads] == [32, 32, 16] * 2  # batches, 2 epochs, nothing else
    for epoch in (reads[:3], reads[3:]):
        assert sorted(i for batch in epoch for i in batch) == list(range(80))


def test_a_zca_fit_streams_a_store_to_the_matrix_of_the_images_in_memory(data):
    from habactl.interop.zca import fit_zca

    stored = open_stored(data / "toy.store").train.images
    in_memory = open_data(str(data / "toy.npz")).train.images
    streamed, whole = fit_zca(stored), fit_zca(in_memory)
    assert torch.allclose(streamed.matrix, whole.matrix, rtol=1e-5, atol=1e-6)
    assert torch.allclose(streamed.mean_image, whole.mean_image, rtol=1e-12, atol=1e-12)


# -- the in-memory bound --------------------------------------------------------------


def test_a_large_source_is_refused_with_the_prepare_command(data, monkeypatch, tmp_path):
    assert estimate_bytes(str(data / "toy.npz")) == 4 * 100 * 3 * 16 * 16
    monkeypatch.setenv("HABACTL_MAX_IN_MEMORY", "100K")
    line = one_error_line(run("compress", data / "toy.npz", "-o", tmp_path / "a.haba"))
    assert "take 300.0 KiB as float32, more than habactl loads into memory (100.0 KiB" in line
    assert line.endswith(f"habactl prepare {data / 'toy.npz'} -o toy.store")
    # the store of the same pixels is read lazily: no bound applies
    assert run("compress", data / "toy.store", "--objective", "random", "-q",
               "-o", tmp_path / "b.haba").exit_code == 0  # fmt: skip
    monkeypatch.setenv("HABACTL_MAX_IN_MEMORY", "none")
    assert run("compress", data / "toy.npz", "--objective", "random", "-q",
               "-o", tmp_path / "c.haba").exit_code == 0  # fmt: skip
    monkeypatch.setenv("HABACTL_MAX_IN_MEMORY", "lots")
    assert "HABACTL_MAX_IN_MEMORY='lots'" in one_error_line(
        run("compress", data / "toy.npz", "-o", tmp_path / "d.haba")
    )


def test_size_estimates_of_folders_and_hdf5_files(tmp_path):
    from PIL import Image

    for k in range(2):
        (tmp_path / "f" / f"c{k}").mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (6, 5)).save(tmp_path / "f" / f"c{k}" / f"{i}.png")
    assert estimate_bytes(str(tmp_path / "f")) == 4 * 6 * 3 * 5 * 6
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["images"] = np.zeros((10, 3, 4, 4), dtype=np.uint8)
        f["labels"] = np.zeros(10, dtype=np.int64)
    assert estimate_bytes(str(tmp_path / "d.h5")) == 4 * 10 * 3 * 4 * 4
    assert estimate_bytes("digits") is None


# -- subprocesses: memory, torchrun -----------------------------------------------------


def _compress_peak(data: Path, out: Path) -> int:
    """The peak resident memory (KiB) of one compress in a child process."""
    args = [str(data), "--codec", "raw", "--iterations", "2", "--real-per-class", "16",
            "--threads", "1", "-q", "-o", str(out)]  # fmt: skip
    return habactl_peak_kib(["compress", *args], out)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_peak_memory_stays_flat_as_the_store_grows_tenfold(tmp_path):
    # 10 classes of 3x32x32: 100 images per class (3 MiB) and 1,000 (29 MiB; 117 MiB as
    # float32, which a run loading the set would hold two or three times over).
    small = make_store(tmp_path / "small.store", classes=10, per_class=100, size=32)
    large = make_store(tmp_path / "large.store", classes=10, per_class=1000, size=32)
    peaks = [_compress_peak(small, tmp_path / "s.haba"), _compress_peak(large, tmp_path / "l.haba")]
    assert peaks[1] < 1.10 * peaks[0], peaks


@pytest.mark.slow
def test_two_ranks_on_a_store_take_the_steps_of_one_process(data, tmp_path):
    if not TORCHRUN.exists():
        pytest.skip("torchrun not installed")
    args = ("compress", data / "toy.store", "--objective", "dm", "--codec", "raw",
            "--iterations", "3", "--real-per-class", "4", "--classes-per-iteration", "3",
            "--threads", "1", "-q")  # fmt: skip
    one = run_habactl(*args, "-o", "one.haba", cwd=tmp_path, world=None)
    two = run_habactl(*args, "-o", "two.haba", cwd=tmp_path, world=2)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    single, split = stored_tensors(tmp_path / "one.haba"), stored_tensors(tmp_path / "two.haba")
    for name in single:
        assert float((split[name] - single[name]).abs().max()) < TOLERANCE, name
