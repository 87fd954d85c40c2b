"""Distillation benchmarks: seconds per DM iteration, and a quick accuracy check.

    python bench/distill.py speed   # the default cases (each in its own process)
    python bench/distill.py speed --case 1x28x28:10:64:raw --iterations 10
    python bench/distill.py accuracy               # default compress vs random, ConvNet-3 accuracy

    python bench/distill.py speed --device cuda     # the same on a GPU
    python bench/distill.py side --threads 1        # habactl vs a reference-structured DM loop

`speed` prints, per case, seconds per iteration (median after warm-up iterations), the
floating-point work of one iteration (GFLOP/it: 2 x the multiply-adds of every
convolution and matrix product run, forward and backward, real side, synthetic side,
hallucinators and contrastive extractor, counted by torch.utils.flop_counter), the
achieved GFLOP/s (GFLOP/it over the median seconds), and its share of the machine's
float32 peak measured in the same process, on the same device and threads, before the
case and after each timed iteration (the best samples of a matmul and of a compute-bound
convolution, both printed; see `measured_peak`), and the peak RSS of the process. A case
is SHAPE:IPC:REAL_PER_CLASS:CODEC[:VIEWS]; 1x28x28 uses the embedded mnist-5k, other
shapes random images with 10 classes (the cost depends only on the shapes).

`side` times, in one process and interleaved iteration by iteration (so a busy machine
slows both alike), habactl's DM iteration and `bench/reference_dm.py`'s (our own
reference-structured loop) on the same data, and splits habactl's iteration into its
phases (real side; synthetic decode, augmentation, forward, backward; optimiser), with
the profiler's per-op table of the synthetic side.

`accuracy` trains ConvNet-3 from scratch on archives (SGD lr 0.01, momentum 0.9, weight
decay 5e-4, batch 256, DSA augmentation, lr x 0.1 at half-time) and reports test
accuracy on mnist-5k's test split, normalised as each archive says.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

DEFAULT_CASES = [
    "1x28x28:1:64:raw",
    "1x28x28:10:64:raw",
    "1x28x28:10:64:haba",
    "1x28x28:1:256:raw",
    "1x28x28:10:256:raw",
    "1x28x28:10:256:haba",
    "1x28x28:1:64:haba+idc",
    "3x32x32:1:64:raw",
    "3x32x32:10:64:raw",
    "3x32x32:10:64:haba",
    "3x32x32:10:256:raw",
]


def machine() -> str:
    model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{model}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, python {platform.python_version()}"
    )


def fake_source(shape: tuple[int, int, int], per_class: int = 300, classes: int = 10):
    from habactl.data.base import LabeledImages, make_source

    generator = torch.Generator().manual_seed(0)
    n = per_class * classes
    images = torch.rand(n, *shape, generator=generator)
    labels = torch.arange(classes).repeat_interleave(per_class)
    test = LabeledImages(images[:classes], labels[:classes])
    return make_source(
        f"random-{'x'.join(map(str, shape))}",
        [str(k) for k in range(classes)],
        LabeledImages(images, labels),
        test,
        is_digits=False,
    )


def sync(device: torch.device) -> None:
    """Wait for the device (a GPU's queue), so a timer measures the work, not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_rate(device: torch.device, flops: float, run, repeats: int) -> float:
    """GFLOP/s of the fastest of ``repeats`` calls of ``run`` (after one warm-up)."""
    best = float("inf")
    for _ in range(repeats + 1):
        sync(device)
        start = time.perf_counter()
        run()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return flops / best / 1e9


def matmul_peak(device: torch.device, repeats: int = 8) -> float:
    """GFLOP/s of the best of ``repeats`` square float32 matrix products on ``device`` with
    the current threads. On a GPU the product is allowed TF32 exactly when cuDNN's
    convolutions are (PyTorch's default: they are)."""
    n = 1024 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32
    try:
        return _best_rate(device, 2 * n**3, lambda: a @ b, repeats)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def conv_peak(device: torch.device, repeats: int = 8) -> float:
    """GFLOP/s of the best of ``repeats`` compute-bound 3x3 convolutions: ConvNet-3's
    128 -> 128 channel layer at 16x16 on 32 images (256 on a GPU). On a CPU this can beat
    the matmul: oneDNN's convolutions use AVX-512 where MKL's sgemm may not (AMD CPUs)."""
    import torch.nn.functional as F

    n = 32 if device.type == "cpu" else 256
    x = torch.randn(n, 128, 16, 16, device=device)
    w = torch.randn(128, 128, 3, 3, device=device)
    return _best_rate(
        device, 2 * n * 128 * 128 * 9 * 16 * 16, lambda: F.conv2d(x, w, padding=1), repeats
    )


def measured_peak(device: torch.device, repeats: int = 8) -> dict[str, float]:
    """The machine's practical float32 peak here and now: the better of a matmul and a
    convolution (both are reported)."""
    rates = {"matmul": matmul_peak(device, repeats), "conv": conv_peak(device, repeats)}
    return {**rates, "best": max(rates.values())}


def _best_of(samples: list[dict[str, float]]) -> dict[str, float]:
    return {k: max(s[k] for s in samples) for k in samples[0]}


def iteration_flops(distiller) -> float:
    """FLOPs of one iteration (it is run once more, outside the timings): 2 x the
    multiply-adds of every convolution and matrix product, forward and backward."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        distiller.step()
    return float(counter.get_total_flops())


def build_case(case: str, device: str = "auto"):
    from habactl.data import load_source
    from habactl.distill import DistillConfig, Distiller

    parts = case.split(":")
    shape = tuple(int(s) for s in parts[0].split("x"))
    ipc, real, codec = int(parts[1]), int(parts[2]), parts[3]
    views = int(parts[4]) if len(parts) > 4 else 1
    source = load_source("mnist-5k") if shape == (1, 28, 28) else fake_source(shape)
    config = DistillConfig(
        codec=codec,
        ipc=ipc,
        iterations=0,
        device=device,
        objective_settings={"real_per_class": real, "views": views},
    )
    return source, Distiller(source, config)


def run_case(case: str, iterations: int, warmup: int, device: str = "auto") -> dict:
    source, distiller = build_case(case, device)
    where = distiller.device
    peaks = [measured_peak(where)]
    for _ in range(warmup):
        distiller.step()
    sync(where)
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        distiller.step()
        sync(where)
        times.append(time.perf_counter() - start)
        peaks.append(measured_peak(where, repeats=3))  # sampled all along: a shared machine
    flops = iteration_flops(distiller)
    peak = _best_of(peaks)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds = statistics.median(times)
    return {
        "case": case,
        "device": where.type,
        "plan": distiller.plan.summary(),
        "contrastive": distiller.contrast is not None,
        "s_per_it": seconds,
        "min_s": min(times),
        "gflop_per_it": flops / 1e9,
        "gflop_per_s": flops / 1e9 / seconds,
        "matmul_gflop_per_s": peak["matmul"],
        "conv_gflop_per_s": peak["conv"],
        "peak_gflop_per_s": peak["best"],
        "share_of_peak": flops / 1e9 / seconds / peak["best"],
        "share_of_matmul": flops / 1e9 / seconds / peak["matmul"],
        "peak_rss_mib": peak_kib / 1024,
        "iterations": iterations,
    }


def speed(args: argparse.Namespace) -> None:
    print(f"machine: {machine()}, device {args.device}")
    print(
        f"{'case':24} {'s/it':>7} {'min':>7} {'GFLOP/it':>9} {'GFLOP/s':>8} {'matmul':>7} "
        f"{'conv':>6} {'share':>6} {'RSS MiB':>8}  plan"
    )
    for case in args.case or DEFAULT_CASES:
        command = [
            sys.executable,
            __file__,
            "one",
            case,
            "--iterations",
            str(args.iterations),
            "--warmup",
            str(args.warmup),
            "--threads",
            str(args.threads),
            "--device",
            args.device,
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{case:24} failed: {done.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"{case:24} {r['s_per_it']:7.3f} {r['min_s']:7.3f} {r['gflop_per_it']:9.1f} "
            f"{r['gflop_per_s']:8.1f} {r['matmul_gflop_per_s']:7.0f} {r['conv_gflop_per_s']:6.0f} "
            f"{r['share_of_peak']:6.0%} "
            f"{r['peak_rss_mib']:8.0f}  {r['plan']}{' +contrastive' if r['contrastive'] else ''}",
            flush=True,
        )


# -- side by side: habactl vs a reference-structured loop, and where the time goes --------

SIDE_CASES = ["1x28x28:10:32:raw", "1x28x28:10:256:raw"]


class Phases:
    """Seconds (or, with ``flops``, FLOPs) per named phase of one iteration."""

    def __init__(self, device: torch.device, flops: bool = False) -> None:
        self.device, self.flops = device, flops
        self.values: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False) if self.flops else contextlib.nullcontext()
        sync(self.device)
        start = time.perf_counter()
        with counter:
            yield
        sync(self.device)
        value = counter.get_total_flops() if self.flops else time.perf_counter() - start
        self.values[name] = self.values.get(name, 0.0) + float(value)


def dm_draws_and_real_side(distiller, phase: Phases):
    """The first half of one habactl DM iteration (one process): every random draw, then
    the real side. Mirrors ``DistributionMatching.loss``; returns what the second half needs."""
    from habactl.nets import seeded as networks

    objective, synthetic = distiller.objective, distiller.synthetic
    generator, context = distiller.generators["objective"], distiller.objective.context
    classes, per = context.num_classes, objective.settings["real_per_class"]
    augment = context.augment
    with phase("draws (network, indices, augmentation)"):
        networks.redraw(objective.net, generator)
        real = context.real.sample(per, generator)
        basis, variant = synthetic.draw(objective.settings["views"], generator)
        params = objective._augment_params(generator)
    with phase("real: augmentation"), torch.inference_mode():
        real = torch.cat([augment.apply(real[c], params[c]) for c in range(classes)])
    with phase("real: forward"):
        with torch.inference_mode():
            embedded = networks.embed_no_grad(objective.net, real, objective.chunk)
            real_mean = embedded.view(classes, per, -1).mean(dim=1)
        real_mean = real_mean.clone()
    return real_mean, basis, variant, params


def dm_synthetic_side(distiller, phase: Phases, real_mean, basis, variant, params) -> None:
    """The second half: the synthetic side and the step (as ``Distiller.step``, no
    contrastive term: the cases are raw)."""
    from habactl.nets import seeded as networks

    objective, synthetic = distiller.objective, distiller.synthetic
    augment, classes = objective.context.augment, objective.context.num_classes
    with phase("synthetic: decode"):
        syn = synthetic.decode(basis, variant)
        items = synthetic.class_counts(basis)
    with phase("synthetic: augmentation"):
        syn = torch.cat([augment.apply(part, p) for part, p in zip(syn.split(items), params)])
    with phase("synthetic: forward + loss"):
        embedded = networks.embed(objective.net, syn, objective.chunk)
        labels = synthetic.item_labels(basis)
        sums = embedded.new_zeros(classes, embedded.shape[1]).index_add(0, labels, embedded)
        counts = torch.tensor(items, dtype=embedded.dtype).to(embedded.device).unsqueeze(1)
        loss = (real_mean - sums / counts).square().sum()
    with phase("synthetic: backward"):
        grads = torch.autograd.grad(loss, distiller.learnable, allow_unused=True)
    with phase("optimizer step"):
        for p, g in zip(distiller.learnable, grads):
            p.grad = torch.zeros_like(p) if g is None else g
        distiller.optimizer.step()
        distiller.optimizer.zero_grad(set_to_none=True)


def dm_phases(distiller, flops: bool = False) -> dict[str, float]:
    phase = Phases(distiller.device, flops)
    dm_synthetic_side(distiller, phase, *dm_draws_and_real_side(distiller, phase))
    return phase.values


def synthetic_side_table(distiller, rows: int = 14) -> str:
    """The profiler's per-op table (self CPU time) of one iteration's synthetic side."""
    from torch.profiler import profile

    phase = Phases(distiller.device)
    drawn = dm_draws_and_real_side(distiller, phase)
    with profile() as trace:
        dm_synthetic_side(distiller, phase, *drawn)
    return trace.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def side(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from reference_dm import ReferenceDM
    from torch.utils.flop_counter import FlopCounterMode

    print(f"machine: {machine()}, device {args.device}", flush=True)
    results = []
    for case in args.case or SIDE_CASES:
        source, distiller = build_case(case, args.device)
        where = distiller.device
        _, ipc, real, _ = case.split(":")[:4]
        reference = ReferenceDM(
            distiller.real.images,  # the same normalised images, on the same device
            distiller.real.labels,
            len(source.classes),
            int(ipc),
            int(real),
            flip=not source.is_digits,
        )
        peaks = [measured_peak(where)]
        for _ in range(args.warmup):
            distiller.step()
            reference.step()
        ours, theirs, phases = [], [], []
        for _ in range(args.iterations):  # interleaved: the same conditions for both
            for run, times in ((distiller.step, ours), (reference.step, theirs)):
                sync(where)
                start = time.perf_counter()
                run()
                sync(where)
                times.append(time.perf_counter() - start)
            phases.append(dm_phases(distiller))
            peaks.append(measured_peak(where, repeats=3))  # sampled all along: a busy machine
        counter = FlopCounterMode(display=False)
        with counter:
            reference.step()
        flops = {
            "habactl": iteration_flops(distiller),
            "reference": float(counter.get_total_flops()),
        }
        phase_flops = dm_phases(distiller, flops=True)
        table = synthetic_side_table(distiller)
        seconds = {"habactl": statistics.median(ours), "reference": statistics.median(theirs)}
        phase_seconds = {k: statistics.median(p[k] for p in phases) for k in phases[0]}
        rates = _best_of(peaks)
        peak = rates["best"]
        result = {
            "case": case,
            "device": where.type,
            "threads": torch.get_num_threads(),
            "peak_gflop_per_s": peak,
            "matmul_gflop_per_s": rates["matmul"],
            "conv_gflop_per_s": rates["conv"],
            "seconds": seconds,
            "gflop": {k: v / 1e9 for k, v in flops.items()},
            "phases": {
                k: {"s": v, "gflop": phase_flops[k] / 1e9} for k, v in phase_seconds.items()
            },
            "speedup": seconds["reference"] / seconds["habactl"],
        }
        results.append(result)
        print(
            f"\n{case}: peak {peak:.1f} GFLOP/s (best samples: matmul {rates['matmul']:.1f}, "
            f"conv {rates['conv']:.1f})"
        )
        print(f"{'':34} {'s/it':>8} {'GFLOP/it':>9} {'GFLOP/s':>8} {'share':>6}")
        for name in ("habactl", "reference"):
            rate = flops[name] / 1e9 / seconds[name]
            print(
                f"{name:34} {seconds[name]:8.3f} {flops[name] / 1e9:9.2f} {rate:8.1f} "
                f"{rate / peak:6.0%}"
            )
        print(f"reference / habactl: {result['speedup']:.2f}x")
        print("habactl's iteration by phase (medians):")
        for name, v in result["phases"].items():
            rate = v["gflop"] / v["s"] if v["s"] > 0 else 0.0
            print(f"  {name:32} {v['s']:8.3f} {v['gflop']:9.2f} {rate:8.1f} {rate / peak:6.0%}")
        print("the synthetic side, per op (one iteration):")
        print(table, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "results": results}, indent=1))


# -- accuracy ---------------------------------------------------------------------------


def train_and_test(archive: Path, *, epochs: int, seed: int, test_images, test_labels) -> float:
    """ConvNet-3 from scratch on the expanded archive; test accuracy (%) on real images."""
    import torch.nn.functional as F

    from habactl.codecs import Pipeline
    from habactl.format import open_archive
    from habactl.format.normalization import Normalizer
    from habactl.nets import build_net
    from habactl.training.augment import SiameseAugment

    with open_archive(archive) as a:
        info = a.info
        tensors = a.tensors()
    pipeline = Pipeline.from_manifest(info.pipeline_entries(), info.bases.shape)
    pipeline.load_tensors({k: v for k, v in tensors.items() if k.startswith("pipeline.")})
    with torch.no_grad():
        images = pipeline.decode_all(tensors["bases"])
    labels = tensors["labels"].repeat_interleave(pipeline.expansion)
    torch.manual_seed(seed)
    net = build_net("convnet", *info.image.shape, len(info.classes))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    augment = SiameseAugment(flip=False)
    generator = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    for epoch in range(epochs):
        if epoch == epochs // 2:
            for group in optimizer.param_groups:
                group["lr"] *= 0.1
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, 256):
            index = order[start : start + 256]
            x = augment(images[index], generator, per_sample=True)
            loss = F.cross_entropy(net(x), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    normalise = Normalizer(info.normalization.to_json())
    net.eval()
    with torch.no_grad():
        predictions = torch.cat(
            [net(normalise(chunk)).argmax(1) for chunk in test_images.split(250)]
        )
    return 100.0 * float((predictions == test_labels).float().mean())


def accuracy(args: argparse.Namespace) -> None:
    from habactl.data import load_source

    print(f"machine: {machine()}")
    source = load_source("mnist-5k")
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}
    archives = {}
    for name, extra in (
        ("random", ["--objective", "random"]),
        ("default", []),
        *[(f"arm{i}", a.split()) for i, a in enumerate(args.arm)],
    ):
        path = folder / f"{name}.haba"
        if not path.exists():
            start = time.perf_counter()
            code = "from habactl.cli.main import main; main()"
            done = subprocess.run(
                [sys.executable, "-c", code, "compress", "mnist-5k", "-o", str(path), "-q", *extra],
                env=env,
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise SystemExit(f"{name}: {done.stderr.strip()}")
            print(
                f"{name}: compress {' '.join(extra) or '(defaults)'}: "
                f"{time.perf_counter() - start:.0f} s",
                flush=True,
            )
        archives[name] = path
    for name, path in archives.items():
        scores = []
        for seed in range(args.models):
            start = time.perf_counter()
            scores.append(
                train_and_test(
                    path,
                    epochs=args.epochs,
                    seed=seed,
                    test_images=source.test.images,
                    test_labels=source.test.labels,
                )
            )
            print(
                f"  {name} model {seed}: {scores[-1]:.1f}% ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
        mean = statistics.mean(scores)
        spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
        print(
            f"{name}: {mean:.1f} ± {spread:.1f} % ({args.models} models, {args.epochs} epochs)",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--case", action="append", help="SHAPE:IPC:REAL:CODEC[:VIEWS] (repeatable)")
    s.add_argument("--iterations", type=int, default=5)
    s.add_argument("--warmup", type=int, default=2)
    s.add_argument("--threads", type=int, default=os.cpu_count())
    s.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    o = sub.add_parser("one")
    o.add_argument("case")
    o.add_argument("--iterations", type=int, default=5)
    o.add_argument("--warmup", type=int, default=2)
    o.add_argument("--threads", type=int, default=os.cpu_count())
    o.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    d = sub.add_parser("side")
    d.add_argument("--case", action="append", help="SHAPE:IPC:REAL:raw (default: the two of §3)")
    d.add_argument("--iterations", type=int, default=3)
    d.add_argument("--warmup", type=int, default=1)
    d.add_argument("--threads", type=int, default=1)
    d.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    d.add_argument("--json", help="also write the results to this file")
    a = sub.add_parser("accuracy")
    a.add_argument("--folder", default="bench-out/distill")
    a.add_argument("--epochs", type=int, default=300)
    a.add_argument("--models", type=int, default=3)
    a.add_argument("--threads", type=int, default=os.cpu_count())
    a.add_argument("--arm", action="append", default=[], help="extra compress options to compare")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.mode == "speed":
        speed(args)
    elif args.mode == "one":
        print(json.dumps(run_case(args.case, args.iterations, args.warmup, args.device)))
    elif args.mode == "side":
        side(args)
    else:
        accuracy(args)


if __name__ == "__main__":
    main()
