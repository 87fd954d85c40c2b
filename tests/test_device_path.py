"""The device path: one place chooses the device, and the inner loops never
wait for it.

Every command takes its device from ``habactl.runtime.device.resolve_device`` (through
the job's ``Collective.device_for``). These tests make that one place answer PyTorch's ``meta``
device: tensors there have shapes and no values, so reading a device value on the host
(``.item()``, ``float()``, ``.tolist()``, ``.cpu()``, a boolean mask, an op whose output
shape depends on values) raises. An iteration that finishes on ``meta`` therefore waits
for its device nowhere but in the reads these tests allow:

- ``runtime.host_values``, once per iteration: the loss and the metrics, in one transfer
  (the non-finite check and the log need them), and once per epoch of expert training;
  counted here;
- MTT's step bound, which compares gradient norms with parameter norms on the host.

A dispatch mode also watches every op that takes a device tensor: a host tensor among its
inputs (an index, a mask) would be copied by a blocking ``.to`` on CUDA, which waits for
the GPU; only ``runtime.to_device`` (pinned memory, non-blocking) may move tensors in.

On a CPU the profiler cannot tell these apart: a read of a host-side random draw and a
read of a device value are both ``aten::_local_scalar_dense``. The CUDA test at the end
counts the real synchronisations with the profiler where there is a GPU.
"""

from __future__ import annotations

import pytest
import torch

from device_watch import META, HostTensorWatch, device_tensors
from habactl.distill import DistillConfig, Distiller
from habactl.distill import engine as engine_module
from habactl.distill.stepbound import bound_steps
from habactl.runtime import device as runtime
from helpers import tiny_mnist

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def on_meta(monkeypatch):
    """The one place answers ``meta`` for every device name; the engine's per-iteration
    read is counted (and answers zeros, since meta tensors have no values)."""
    reads: list[list[str]] = []

    def host_values(values):
        reads.append(sorted(values))
        return {k: 0.0 for k in values}

    monkeypatch.setattr(runtime, "resolve_device", lambda name: META)
    monkeypatch.setattr(runtime, "host_values", host_values)
    return reads


@pytest.fixture(scope="module")
def buffer(tmp_path_factory):
    from habactl.experts import ExpertSettings, train_experts

    folder = tmp_path_factory.mktemp("device") / "buffer"
    settings = ExpertSettings(experts=1, epochs=2, width=0.125, batch_size=32, device="cpu")
    train_experts(tiny_mnist(), folder, settings)
    return folder


CASES = {
    "dm-raw": ("dm", "raw", 2, {"real_per_class": 4}),
    "dm-haba": ("dm", "haba", 2, {"real_per_class": 4}),  # hallucinators + contrastive
    "dc-raw": ("dc", "raw", 2, {"real_per_class": 4, "inner_loop": 1}),
    "dsa-haba": ("dsa", "haba", 2, {"real_per_class": 4, "per_class": "loop"}),
    "mtt-raw": ("mtt", "raw", 1, {"syn_steps": 2}),
    "mtt-haba": ("mtt", "haba", 2, {"syn_steps": 2, "unroll": "full"}),
    "dd-raw": ("dd", "raw", 1, {"inner_steps": 2, "real_per_class": 4, "net_width": 0.125}),
    "dd-haba-labels": (
        "dd",
        "haba",
        2,
        {"inner_steps": 2, "real_per_class": 4, "net_width": 0.125, "learn_labels": True},
    ),
    "kip-haba": ("kip", "haba", 2, {"real_per_class": 4, "models": 2}),
}


def _distiller(case: str, buffer, device: str = "cpu") -> Distiller:
    """`device` is a name only: on the meta tests the one place decides."""
    objective, codec, ipc, settings = CASES[case]
    if objective == "mtt":
        settings = {**settings, "experts": str(buffer)}
    config = DistillConfig(
        objective=objective,
        codec=codec,
        ipc=ipc,
        iterations=0,
        device=device,
        contrastive_settings={"batch": 4},
        objective_settings=settings,
    )
    return Distiller(tiny_mnist(), config)


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_iteration_waits_for_its_device_once(case, on_meta, buffer, monkeypatch):
    if case.startswith("mtt"):  # the step bound reads norms on the host: stubbed, counted
        bounded: list[int] = []
        monkeypatch.setattr(
            engine_module, "bound_steps", lambda groups, limit: bounded.append(len(groups))
        )
    distiller = _distiller(case, buffer)
    off = [name for name, t in device_tensors(distiller).items() if t.device != META]
    assert not off, f"not on the run's device: {off}"

    watch = HostTensorWatch()
    with watch:
        for _ in range(2):
            record = distiller.step()
    assert not watch.stray, "host tensors mixed into device ops:\n" + "\n".join(watch.stray)
    # One read per iteration, and it holds the loss and every metric the log shows.
    assert len(on_meta) == 2
    assert "loss" in on_meta[0] and CASES[case][0] in on_meta[0]
    assert set(record) == set(on_meta[-1])
    if case.startswith("mtt"):
        assert "lr" in record and len(bounded) == 2


def test_the_one_read_is_the_same_numbers_as_reading_each(monkeypatch):
    # host_values must give exactly float(tensor) for every value (the log and the
    # non-finite check did one read per number before).
    values = {
        "dm": torch.tensor(0.1234567, dtype=torch.float32),
        "lr": torch.tensor(1e-2, dtype=torch.float32),
        "wide": torch.tensor(1.0 / 3.0, dtype=torch.float64),
        "start_epoch": 3.0,
        "loss": torch.tensor(float("nan")),
    }
    read = runtime.host_values(values)
    assert list(read) == list(values)
    for key, value in values.items():
        expected = float(value)
        assert read[key] == expected or (expected != expected and read[key] != read[key]), key


def test_the_step_bound_runs_on_the_device_values_it_is_given():
    # The step bound is the one other documented read (MTT only): it still works on a
    # real device tensor and scales a too-large gradient down to the bound.
    p = torch.ones(10, requires_grad=True)
    p.grad = torch.full((10,), 100.0)
    factors = bound_steps([{"params": [p], "lr": 1.0, "max_step": 0.1}], 0.1)
    assert factors[0] < 1.0
    assert float(p.grad.norm()) == pytest.approx(0.1 * float(p.detach().norm()), rel=1e-6)


def test_evaluation_training_runs_on_the_one_places_device_without_waiting(on_meta):
    from habactl.evaluation.protocol import Protocol
    from habactl.evaluation.train import make_augment, train_net
    from habactl.nets import build_net

    device = runtime.resolve_device("cpu")
    net = build_net("convnet", 1, 28, 28, 3, width_mult=0.125).to(device)
    images = torch.zeros(12, 1, 28, 28, device=device)
    labels = torch.zeros(12, dtype=torch.long, device=device)
    protocol = Protocol(epochs=2, batch_size=5)
    watch = HostTensorWatch()
    with watch:
        train_net(net, images, labels, protocol, augment=make_augment(protocol, flip=False))
    assert not watch.stray, "\n".join(watch.stray)
    assert all(p.device == META for p in net.parameters())


def test_expert_training_reads_its_device_once_an_epoch(on_meta, monkeypatch, tmp_path):
    from habactl.experts import ExpertSettings, train_experts
    from habactl.experts.flat import FlatNet

    rows: list[int] = []
    watch = HostTensorWatch(armed=False)

    def flatten(self):  # a trajectory row: the other read of an epoch
        rows.append(self.count)
        watch.armed = True  # the first row is taken just before the epochs start
        return torch.zeros(self.count)

    monkeypatch.setattr(FlatNet, "flatten", flatten)
    settings = ExpertSettings(experts=1, epochs=3, width=0.125, batch_size=32, device="cpu")
    with watch:
        train_experts(tiny_mnist(), tmp_path / "buffer", settings)
    assert not watch.stray, "\n".join(watch.stray)
    assert on_meta == [["correct", "loss"]] * 3  # one read per epoch, not per batch
    assert len(rows) == 1 + 3  # the start and each epoch's end


@pytest.mark.parametrize("case", ["dm-haba", "dc-raw", "mtt-raw"])
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_iterations_synchronise_as_documented(case, buffer):
    from torch.profiler import ProfilerActivity, profile

    objective = CASES[case][0]
    distiller = _distiller(case, buffer, device="cuda")
    distiller.step()  # warm-up (allocator, kernels)
    torch.cuda.synchronize()
    steps = 3
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as trace:
        for _ in range(steps):
            distiller.step()
        torch.cuda.synchronize()
    # A blocking read (or a blocking copy in) synchronises the stream once.
    syncs = sum(e.name == "cudaStreamSynchronize" for e in trace.events())
    # host_values: one read an iteration; mtt's step bound: two per bounded group.
    allowed = 1 + (2 * len(distiller.optimizer.param_groups) if objective == "mtt" else 0)
    assert syncs <= steps * allowed, syncs
