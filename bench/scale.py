"""Data of any size: time and peak memory of each stage on generated data sets.

    .venv/bin/python bench/scale.py [--sets tiny,folder,imagenet] [--quick]
        [--stages prepare,compress,evaluate,experts,in-memory] [--codecs raw,haba+idc]
        [--stages prepare,teacher,sre2l,relabel,evaluate-kd] [--teacher-epochs 1]
        [--iterations 5] [--per-class 100] [--jpegs-per-class 100]
        [--classes-per-iteration K] [--threads 1] [--in-memory] [--shuffle]
        [--workdir DIR] [--keep] [--json out.json]

Generates data sets on disk, each in a child process that writes a chunk at a time
(never the whole set in memory), runs every stage as a fresh `habactl` process and
prints one table, with the machine in its header:

- tiny: Tiny-ImageNet-shaped `.npz` (Keras keys x_train, y_train, x_test, y_test;
  uint8 N x 64 x 64 x 3), 200 classes x 500 train + 50 test images (1.26 GiB;
  --tiny-per-class N for N train images per class);
- folder: an ImageFolder of 64x64 JPEGs, 10 classes x --jpegs-per-class (split 80/20);
- imagenet: ImageNet-1K-shaped folder of `.npy` files (uint8 N x 3 x 64 x 64), 1000
  classes with 10 test images each and --per-class N train images, run twice, at N/10
  and at N, to compare a set with one ten times its size. A size the free disk cannot
  hold (source and store) is skipped, with a row that says so.

Pixels are random uint8 noise around a mean colour per class (the classes differ, so
distillation has something to match): the numbers measure reading, decoding and
compute; the accuracies mean nothing. --shuffle writes the labels in random order
instead of class after class.

Stages, on every set:
- `habactl prepare SOURCE -o STORE`: img/s over the whole command, and "own img/s", the
  rate prepare prints itself (without Python's start-up);
- `habactl compress STORE --objective dm --ipc 1 --iterations N --codec C` for each
  codec: "to 1st it", seconds from the command's start until its first iteration
  begins (the `start` record of its `--log-file` appearing: start-up, reading the data,
  building the run), and s/it between the first and the last iteration from the log's
  own timestamps (the first iteration, which warms up, is left out);
- `habactl evaluate ARCHIVE --data STORE --epochs 1 --models 1` (the haba+idc archive,
  else the raw one);
- `habactl experts STORE -o DIR --experts 1 --epochs 1`;
- the teacher-driven paradigm, when --stages names its stages (not run by default):
  `habactl teacher STORE -o T --epochs E --width W` (--teacher-epochs, default 1;
  --teacher-width, default 1.0), `habactl compress
  STORE --objective sre2l --teacher T --ipc 1 --iterations N --codec C` (the haba+idc
  codec when it is in --codecs; it reads no real image: the teacher is all it matches),
  `habactl relabel ARCHIVE --teacher T --labels top-k:10 --allow-over` (over the
  budget on purpose: this measures time and memory) and `habactl
  evaluate RELABELLED --data STORE --recipe kd --epochs 1 --models 1`;
- "in memory": the same compress from the source itself (the .npz or the JPEG folder,
  read whole into memory), for the store/in-memory s/it ratio printed under the table.
  It needs about 16 bytes of RAM per source byte: it runs by itself when that is under
  2 GiB and under half the free memory; a larger one (the Tiny set: about 20 GiB) only
  with --in-memory, and then only when the free memory holds it.
A command that fails is a FAILED row with the last line it printed; the benchmark goes
on. --classes-per-iteration K is passed on to every compress. --threads (default 1) is
passed to compress, evaluate and experts: on a 2-core machine busy with other work,
torch's default of a thread per core ran a small compress 10 times slower than one
thread; on a machine of your own, --threads 0 uses every core.

Memory: "peak MiB" is the command's peak resident set (ru_maxrss from wait4: the
largest of the process and any process it waited for). Python with torch alone takes
several hundred MiB, so the first row measures `python -c "import torch, habactl"` and
"+MiB" is what a stage adds to it. A command that keeps worker processes also gets the
sampled sum of its processes' proportional set sizes (a shared page counts 1/k in each
of k processes). The benchmark itself imports no numpy and generates the data in child
processes, so that the commands it starts do not inherit a large peak from it.

--quick: 10 classes x 20 train images (5 test) per set at 16x16 (64x64 distillation
costs seconds an iteration on a CPU), 2 iterations, the haba+idc codec, one ImageNet
size; a minute or two on a busy 2-core machine, most of it Python and torch starting.
Everything is made under a new folder in --workdir (default: the system's temporary
folder; never inside the repository) and removed at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SETS = ("tiny", "folder", "imagenet")
DATA_STAGES = ("prepare", "compress", "evaluate", "experts", "in-memory")
PARADIGM_STAGES = ("teacher", "sre2l", "relabel", "evaluate-kd")
STAGES = DATA_STAGES + PARADIGM_STAGES
RELABEL_TOP_K = 10  # the paradigm's soft labels: the 10 largest of each row
CODECS = ("raw", "haba+idc")
CHUNK_BYTES = 32 * 2**20  # what a generator holds at a time
MEMORY_FACTOR = 16  # RAM of an in-memory compress per source byte (float copies, batches)
AUTO_MEMORY_BYTES = 2 * 2**30
BASE = "start-up: import torch, habactl"
REAL_PER_CLASS = 32  # compress --objective dm's default real images per class
POLL_SECONDS = 0.1
MiB = 2**20
GiB = 2**30


# -- data sets -------------------------------------------------------------------------


@dataclass
class DataSet:
    """One generated data set: what it is and where it goes."""

    name: str  # row label: tiny, folder, imagenet-100, ...
    kind: str  # npz (HWC), npy (CHW folder) or jpeg (class folders)
    classes: int
    train: int  # per class
    test: int  # per class (jpeg: none; prepare splits 80/20)
    side: int = 64  # images are 3 x side x side
    path: str = ""
    shuffle: bool = False
    seed: int = 0

    @property
    def images(self) -> int:
        return self.classes * (self.train + self.test)

    @property
    def raw_bytes(self) -> int:
        return self.images * 3 * self.side**2

    def disk_bytes(self) -> int:
        """Source and store together (JPEGs are smaller than raw pixels: raw bounds them)."""
        return 2 * self.raw_bytes + 64 * MiB

    @property
    def train_per_class(self) -> int:
        """Training images per class as a store holds them (folders: 80/20, rounded)."""
        return self.train - (self.train + 2) // 5 if self.kind == "jpeg" else self.train

    @property
    def in_memory_source(self) -> bool:
        return self.kind in ("npz", "jpeg")


def plan_sets(args: argparse.Namespace) -> list[DataSet]:
    chosen = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SETS))
    if unknown:
        raise SystemExit(f"unknown set(s) {', '.join(unknown)}; choose from {', '.join(SETS)}")
    sets: list[DataSet] = []
    for name in chosen:
        if args.quick:
            kind = {"tiny": "npz", "folder": "jpeg", "imagenet": "npy"}[name]
            sets.append(DataSet(name, kind, 10, 20, 0 if kind == "jpeg" else 5, side=16))
        elif name == "tiny":
            per_class = args.tiny_per_class
            sets.append(DataSet("tiny" if per_class == 500 else f"tiny-{per_class}", "npz", 200,
                                per_class, 50))  # fmt: skip
        elif name == "folder":
            sets.append(DataSet("folder", "jpeg", 10, args.jpegs_per_class, 0))
        else:
            sizes = sorted({max(1, args.per_class // 10), args.per_class})
            sets += [DataSet(f"imagenet-{n}", "npy", 1000, n, 10) for n in sizes]
    for data in sets:
        data.shuffle = args.shuffle
    return sets


# -- generators (run in a child process: `scale.py --generate SPEC`) -------------------


def generate(data: DataSet) -> None:
    import numpy as np

    rng = np.random.default_rng(data.seed)
    # A mean colour per class in [0, 192]; noise in [0, 64) on top stays within uint8.
    means = rng.integers(0, 193, (data.classes, 3), dtype=np.uint8)
    path = Path(data.path)
    if data.kind == "jpeg":
        _jpeg_folder(path, data, means, rng)
        return
    splits = {"train": data.train, "test": data.test}
    if data.kind == "npz":
        import zipfile

        part = path.with_name(path.name + ".part")
        with zipfile.ZipFile(part, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for split, per_class in splits.items():
                labels = _labels(data.classes, per_class, data.shuffle, rng)
                for member, writer in (
                    (f"x_{split}.npy", lambda f, lab=labels: _images(f, data, lab, means, rng)),
                    (f"y_{split}.npy", lambda f, lab=labels: _array(f, lab)),
                ):
                    with archive.open(member, "w", force_zip64=True) as handle:
                        writer(handle)
        os.replace(part, path)
        return
    path.mkdir(parents=True, exist_ok=True)
    for split, per_class in splits.items():
        labels = _labels(data.classes, per_class, data.shuffle, rng)
        with open(path / f"x_{split}.npy", "wb") as handle:
            _images(handle, data, labels, means, rng)
        with open(path / f"y_{split}.npy", "wb") as handle:
            _array(handle, labels)


def _labels(classes: int, per_class: int, shuffle: bool, rng: Any) -> Any:
    import numpy as np

    labels = np.repeat(np.arange(classes, dtype=np.int64), per_class)
    return rng.permutation(labels) if shuffle else labels


def _header(handle: Any, shape: tuple[int, ...], dtype: Any) -> None:
    import numpy as np

    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False}
    np.lib.format.write_array_header_1_0(handle, {**header, "shape": shape})


def _array(handle: Any, array: Any) -> None:
    _header(handle, array.shape, array.dtype)
    handle.write(array.tobytes())


def _images(handle: Any, data: DataSet, labels: Any, means: Any, rng: Any) -> None:
    """uint8 images, one per label, written CHUNK_BYTES at a time: N x H x W x 3 in an
    .npz (as Keras stores them), N x 3 x H x W in .npy files."""
    import numpy as np

    layout = "HWC" if data.kind == "npz" else "CHW"
    side = data.side
    shape = (side, side, 3) if layout == "HWC" else (3, side, side)
    _header(handle, (len(labels), *shape), np.uint8)
    rows = max(1, CHUNK_BYTES // (3 * side * side))
    for start in range(0, len(labels), rows):
        part = labels[start : start + rows]
        chunk = rng.integers(0, 64, (len(part), *shape), dtype=np.uint8)
        colour = means[part]  # (n, 3)
        chunk += colour[:, None, None, :] if layout == "HWC" else colour[:, :, None, None]
        handle.write(chunk.tobytes())


def _jpeg_folder(path: Path, data: DataSet, means: Any, rng: Any) -> None:
    import numpy as np
    from PIL import Image

    part = path.with_name(path.name + ".part")
    for cls in range(data.classes):
        folder = part / f"class{cls:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(data.train):
            # Smooth content (an upsampled 8x8 image) compresses as photographs do.
            small = rng.integers(0, 64, (8, 8, 3), dtype=np.uint8) + means[cls]
            image = Image.fromarray(small).resize((data.side,) * 2, Image.Resampling.BILINEAR)
            image.save(folder / f"{i:05d}.jpg", quality=90)
    os.replace(part, path)


# -- measuring one command -------------------------------------------------------------


@dataclass
class Run:
    seconds: float
    peak_mib: float
    tree_mib: float
    processes: int
    returncode: int
    output: str  # stdout and stderr
    started_s: float | None = None  # the log's start record seen: iterating begins
    first_done_s: float | None = None  # the log's first iteration record seen


def measure(
    command: list[str], scratch: Path, log: Path | None = None, env: dict[str, str] | None = None
) -> Run:
    """Run `command` in a fresh process; its time, peak memory and output."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **(env or {})}
    out_path = scratch / "command.out"
    with open(out_path, "wb") as out:
        began = time.perf_counter()
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        tree, processes, before = 0, 1, set()
        events: dict[str, float] = {}
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            sizes = _tree_kib(process.pid)
            # A descendant counts from its second sample on: a helper that lives for an
            # instant (ldconfig, started by vfork and sharing the parent's memory until
            # it execs) would otherwise count the parent twice.
            lasting = [kib for child, kib in sizes.items() if child in before]
            total = sizes.get(process.pid, 0) + sum(lasting)
            tree, processes = max(tree, total), max(processes, 1 + len(lasting))
            before = set(sizes) - {process.pid}
            if log is not None and "iteration" not in events:
                for event in _log_events(log):
                    events.setdefault(event, time.perf_counter() - began)
            time.sleep(POLL_SECONDS)
    seconds = time.perf_counter() - began
    process.returncode = os.waitstatus_to_exitcode(status)
    peak = usage.ru_maxrss / 1024  # KiB on Linux
    output = out_path.read_text(errors="replace")
    out_path.unlink()
    return Run(
        seconds,
        peak,
        max(tree / 1024, peak),
        processes,
        process.returncode,
        output,
        events.get("start"),
        events.get("iteration"),
    )


def _tree_kib(pid: int) -> dict[int, int]:
    """{pid: KiB} of `pid` and each of its descendants now: the proportional set size
    (a page shared by k processes counts 1/k in each), else the resident set size."""
    sizes: dict[int, int] = {}
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            sizes[current] = _memory_kib(current)
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    todo += [int(child) for child in children.read().split()]
        except (OSError, ValueError):
            continue  # it ended meanwhile
    return sizes


def _memory_kib(pid: int) -> int:
    for name, key in (("smaps_rollup", "Pss:"), ("status", "VmRSS:")):
        try:
            with open(f"/proc/{pid}/{name}") as handle:
                for line in handle:
                    if line.startswith(key):
                        return int(line.split()[1])
        except OSError:
            continue
    raise OSError(f"no memory figures for process {pid}")


def _log_events(log: Path) -> list[str]:
    """The events in a metrics log so far (start, iteration, ...), in order."""
    try:
        with open(log, encoding="utf-8") as handle:
            return [m.group(1) for m in re.finditer(r'"event": "(\w+)"', handle.read())]
    except OSError:
        return []


def error_line(run: Run) -> str:
    """The line a failed command ended with (habactl's one-line error, or an exception)."""
    if run.returncode < 0:
        return f"killed by signal {-run.returncode}" + (
            " (out of memory?)" if run.returncode == -9 else ""
        )
    lines = [line.strip() for line in run.output.splitlines() if line.strip()]
    text = lines[-1] if lines else f"exit status {run.returncode}"
    return text if len(text) <= 200 else text[:197] + "..."


def log_rates(log: Path) -> tuple[int, float | None]:
    """(iterations logged, seconds per iteration between the first and the last)."""
    times: list[float] = []
    start = None
    try:
        lines = log.read_text(encoding="utf-8").splitlines()
    except OSError:
        return 0, None
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") in ("start", "resume"):
            start = float(record["elapsed_s"])
        elif record.get("event") == "iteration":
            times.append(float(record["elapsed_s"]))
    if len(times) >= 2:
        return len(times), (times[-1] - times[0]) / (len(times) - 1)
    if len(times) == 1 and start is not None:
        return 1, times[0] - start
    return len(times), None


# -- rows ------------------------------------------------------------------------------


@dataclass
class Row:
    set: str
    stage: str
    status: str  # ok, FAILED or skipped
    command: str = ""
    images: int | None = None
    seconds: float | None = None
    img_per_s: float | None = None
    own_img_per_s: float | None = None  # the rate prepare prints, start-up excluded
    first_iteration_s: float | None = None  # command start -> first iteration begins
    first_done_s: float | None = None  # command start -> first iteration ends
    s_per_it: float | None = None
    peak_rss_mib: float | None = None
    tree_rss_mib: float | None = None
    processes: int | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def habactl(*args: str) -> list[str]:
    return [sys.executable, "-m", "habactl", *args]


def shown(command: list[str], work: Path) -> str:
    """The command as a person would type it, paths inside the work folder shortened."""
    if command[:3] == [sys.executable, "-m", "habactl"]:
        command = ["habactl", *command[3:]]
    elif command[0] == sys.executable:
        command = ["python", *command[1:]]
    text = " ".join(f"'{c}'" if " " in c else c for c in command)
    return text.replace(str(work) + os.sep, "")


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.rows: list[Row] = []
        self.last: Run | None = None
        self.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
        self.codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
        unknown = sorted(set(self.stages) - set(STAGES))
        if unknown:
            raise SystemExit(
                f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}"
            )

    def run(
        self,
        data: str,
        stage: str,
        command: list[str],
        log: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> Row:
        print(f"[{data}] {stage}: {shown(command, self.work)}", file=sys.stderr, flush=True)
        result = measure(command, self.work, log, env)
        self.last = result
        row = Row(
            data,
            stage,
            "ok" if result.returncode == 0 else "FAILED",
            command=shown(command, self.work),
            seconds=round(result.seconds, 2),
            peak_rss_mib=round(result.peak_mib, 1),
            tree_rss_mib=round(result.tree_mib, 1),
            processes=result.processes,
            first_iteration_s=_round(result.started_s),
            first_done_s=_round(result.first_done_s),
        )
        if row.status == "FAILED":
            row.note = error_line(result).replace(str(self.work) + os.sep, "")
            print(f"[{data}] {stage}: FAILED {row.note}", file=sys.stderr, flush=True)
        elif result.processes > 1:
            row.note = (
                f"{result.processes} processes: {result.tree_mib:,.0f} MiB together (sampled PSS)"
            )
        row.extra["output_tail"] = result.output[-2000:] if row.status == "FAILED" else ""
        self.rows.append(row)
        return row

    def baseline(self) -> None:
        self.run("-", BASE, [sys.executable, "-c", "import torch, habactl"])

    def data_set(self, data: DataSet) -> None:
        free = shutil.disk_usage(self.work).free
        if free < data.disk_bytes():
            note = f"needs {data.disk_bytes() / GiB:.1f} GiB of disk, {free / GiB:.1f} GiB free"
            self.rows.append(Row(data.name, "all", "skipped", note=note))
            print(f"[{data.name}] skipped: {note}", file=sys.stderr, flush=True)
            return
        folder = self.work / data.name
        folder.mkdir()
        source = folder / {"npz": "source.npz", "npy": "source-npy", "jpeg": "jpegs"}[data.kind]
        data.path = str(source)
        spec = json.dumps(asdict(data))
        try:
            row = self.run(data.name, "generate", [sys.executable, __file__, "--generate", spec])
            row.command = f"(bench/scale.py generator: {data.kind})"
            row.images = data.images
            if row.status == "ok":
                size = _size(source)
                row.note = f"{_bytes(size)} on disk" + (f"; {row.note}" if row.note else "")
                self.stages_of(data, source, folder)
        finally:
            if not self.args.keep:  # the next set gets the disk back
                shutil.rmtree(folder, ignore_errors=True)

    def stages_of(self, data: DataSet, source: Path, folder: Path) -> None:
        store = folder / "store"
        args = self.args
        if "prepare" in self.stages:
            row = self.run(
                data.name, "prepare", habactl("prepare", str(source), "-o", str(store), "-q")
            )
            if row.status == "ok":
                images = data.images if data.kind != "jpeg" else data.classes * data.train
                row.images = images
                row.img_per_s = round(images / row.seconds, 1) if row.seconds else None
                own = re.findall(r"\(([\d,.]+) img/s\)", self.last.output if self.last else "")
                row.own_img_per_s = float(own[-1].replace(",", "")) if own else None
        archives: dict[str, Path] = {}
        for codec in self.codecs:
            if "compress" not in self.stages:
                break
            if not store.is_dir():
                self.failed(
                    data.name, f"compress {codec}", "no store (prepare did not run or failed)"
                )
                continue
            archive = folder / f"{codec.replace('+', '-')}.haba"
            row = self.compress(data, f"compress {codec}", str(store), codec, archive)
            if row.status == "ok" and archive.is_file():
                archives[codec] = archive
        if "evaluate" in self.stages:
            archive = archives.get("haba+idc") or archives.get("raw")
            if archive is None:
                self.failed(data.name, "evaluate", "no archive (compress did not run or failed)")
            else:
                self.run(
                    data.name,
                    f"evaluate ({archive.stem})",
                    habactl(
                        "evaluate", str(archive), "--data", str(store),
                        "--epochs", "1", "--models", "1", "--threads", str(max(1, args.threads)),
                        "-q",
                    ),
                )  # fmt: skip
        if "experts" in self.stages:
            if not store.is_dir():
                self.failed(data.name, "experts", "no store (prepare did not run or failed)")
            else:
                self.run(
                    data.name,
                    "experts",
                    habactl(
                        "experts", str(store), "-o", str(folder / "experts"),
                        "--experts", "1", "--epochs", "1", "--threads", str(args.threads), "-q",
                    ),
                )  # fmt: skip
        if any(stage in self.stages for stage in PARADIGM_STAGES):
            self.paradigm(data, store, folder)
        if "in-memory" in self.stages and data.in_memory_source:
            need = MEMORY_FACTOR * data.raw_bytes
            available = _available_memory()
            small = need <= AUTO_MEMORY_BYTES and need <= available / 2
            fits = need + GiB <= available
            for codec in self.codecs:
                stage = f"compress {codec} (in memory)"
                if not (small or (args.in_memory and fits)):
                    why = "add --in-memory to run it" if fits else f"{available / GiB:.1f} GiB free"
                    note = f"needs about {need / GiB:.1f} GiB of RAM; {why}"
                    self.rows.append(Row(data.name, stage, "skipped", note=note))
                    continue
                archive = folder / f"{codec.replace('+', '-')}-memory.haba"
                self.compress(data, stage, str(source), codec, archive)

    def paradigm(self, data: DataSet, store: Path, folder: Path) -> None:
        """Teacher, sre2l recovery, relabelling and KD evaluation, each needing the last."""
        args = self.args
        threads = ["--threads", str(args.threads)]
        teacher = folder / "teacher.safetensors"
        codec = "haba+idc" if "haba+idc" in self.codecs else self.codecs[0]
        recovered = folder / f"sre2l-{codec.replace('+', '-')}.haba"
        relabelled = folder / "sre2l-relabelled.haba"
        steps = [
            ("teacher", store, habactl(
                "teacher", str(store), "-o", str(teacher),
                "--epochs", str(args.teacher_epochs), "--width", str(args.teacher_width),
                *threads, "-q",
            )),
            ("sre2l", teacher, None),
            ("relabel", recovered, habactl(
                "relabel", str(recovered), "--teacher", str(teacher), "-o", str(relabelled),
                "--labels", f"top-k:{min(RELABEL_TOP_K, data.classes)}", "--allow-over",
                *threads, "-q",
            )),
            ("evaluate-kd", relabelled, habactl(
                "evaluate", str(relabelled), "--data", str(store), "--recipe", "kd",
                "--epochs", "1", "--models", "1", *threads, "-q",
            )),
        ]  # fmt: skip
        for stage, needs, command in steps:
            if stage not in self.stages:
                continue
            if not needs.exists():
                self.failed(data.name, stage, f"no {needs.name} (an earlier stage did not run)")
                continue
            if stage == "sre2l":
                sre2l = ["--objective", "sre2l", "--teacher", str(teacher)]
                self.compress(data, f"sre2l {codec}", str(store), codec, recovered, sre2l)
                continue
            row = self.run(data.name, stage, command)
            if stage == "teacher" and row.status == "ok":
                row.images = data.classes * data.train_per_class * args.teacher_epochs
                row.img_per_s = round(row.images / row.seconds, 1) if row.seconds else None

    def compress(
        self,
        data: DataSet,
        stage: str,
        source: str,
        codec: str,
        archive: Path,
        objective: list[str] | None = None,
    ) -> Row:
        """One compress run (dm unless `objective` gives other flags), with its s/it."""
        log = archive.with_suffix(".jsonl")
        extra = list(objective or ["--objective", "dm"])
        if data.train_per_class < REAL_PER_CLASS and not objective:
            # dm draws 32 real images per class; small sets (--quick, imagenet-10) have fewer.
            extra += ["--real-per-class", str(data.train_per_class)]
        if self.args.classes_per_iteration:
            extra += ["--classes-per-iteration", str(self.args.classes_per_iteration)]
        command = habactl(
            "compress", source, "--ipc", "1",
            "--iterations", str(self.args.iterations), "--codec", codec,
            "-o", str(archive), "--log-file", str(log), "--threads", str(self.args.threads),
            "-q", *extra,
        )  # fmt: skip
        # A large source loaded whole is refused by default (it names `habactl prepare`);
        # the comparison with memory lifts that bound on purpose.
        env = {"HABACTL_MAX_IN_MEMORY": "none"} if "(in memory)" in stage else None
        row = self.run(data.name, stage, command, log, env)
        if row.status == "ok":
            done, rate = log_rates(log)
            row.s_per_it = _round(rate, 3)
            row.extra["iterations"] = done
        return row

    def failed(self, name: str, stage: str, why: str) -> None:
        self.rows.append(Row(name, stage, "FAILED", note=why))


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _bytes(size: float) -> str:
    return f"{size / GiB:.2f} GiB" if size >= GiB else f"{size / MiB:.1f} MiB"


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def machine() -> dict[str, Any]:
    from importlib import metadata

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    total = 0
    try:
        with open("/proc/meminfo") as meminfo:
            total = int(meminfo.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    versions = {}
    for package in ("torch", "numpy", "pillow"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "?"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "ram_gib": round(total / GiB, 1),
        "available_gib": round(_available_memory() / GiB, 1),
        "python": platform.python_version(),
        **versions,
    }


# -- the table -------------------------------------------------------------------------


def _num(value: float | None, digits: int = 0) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def table(rows: list[Row], info: dict[str, Any], settings: dict[str, Any]) -> str:
    base = next((r.peak_rss_mib for r in rows if r.set == "-" and r.status == "ok"), None)
    lines = [
        f"{info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), "
        f"{info['ram_gib']} GiB RAM ({info['available_gib']} GiB available at the start); "
        f"Python {info['python']}, torch {info['torch']}, numpy {info['numpy']}",
        f"random uint8 pixels around a per-class mean colour (timing and memory only); "
        f"compress: dm (sre2l: its own row), IPC 1, {settings['iterations']} iterations; "
        f"--threads {settings['threads']}"
        + ("; --quick: 16x16 images" if settings["quick"] else ""),
        "",
    ]
    head = ["set", "stage", "images", "s", "img/s", "own img/s", "to 1st it", "s/it",
            "peak MiB", "+MiB", "note"]  # fmt: skip
    body = []
    for r in rows:
        added = None
        if base is not None and r.peak_rss_mib is not None and r.stage not in ("generate", BASE):
            added = r.peak_rss_mib - base
        note = r.note if r.status == "ok" else f"{r.status}: {r.note}".rstrip(": ")
        body.append(
            [
                r.set, r.stage, _num(r.images), _num(r.seconds, 1), _num(r.img_per_s),
                _num(r.own_img_per_s), _num(r.first_iteration_s, 1), _num(r.s_per_it, 2),
                _num(r.peak_rss_mib), "" if added is None else f"{added:+,.0f}", note,
            ]
        )  # fmt: skip
    widths = [max(len(str(x)) for x in column) for column in zip(head, *body)]
    right = {2, 3, 4, 5, 6, 7, 8, 9}
    for cells in [head, *body]:
        text = "  ".join(
            (c.rjust(w) if i in right else c.ljust(w)) if i < len(cells) - 1 else c
            for i, (c, w) in enumerate(zip(cells, widths))
        )
        lines.append(text.rstrip())
    ratios = ratio_lines(rows)
    if ratios:
        lines += ["", *ratios]
    return "\n".join(lines)


def ratio_lines(rows: list[Row]) -> list[str]:
    """Store vs in-memory s/it for each set and codec measured both ways."""
    found = {(r.set, r.stage): r for r in rows if r.status == "ok" and r.s_per_it}
    lines = []
    for (name, stage), row in found.items():
        if stage.endswith("(in memory)"):
            continue
        memory = found.get((name, f"{stage} (in memory)"))
        if memory and row.s_per_it and memory.s_per_it:
            lines.append(
                f"{name} {stage}: store {row.s_per_it:.3f} s/it, in memory "
                f"{memory.s_per_it:.3f} s/it, ratio {row.s_per_it / memory.s_per_it:.2f}"
            )
    return lines


# -- main ------------------------------------------------------------------------------


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--sets", default=",".join(SETS), help="tiny, folder, imagenet")
    parser.add_argument(
        "--stages",
        default=",".join(DATA_STAGES),
        help=", ".join(DATA_STAGES) + "; and the teacher-driven " + ", ".join(PARADIGM_STAGES),
    )
    parser.add_argument("--teacher-epochs", type=int, default=1, help="teacher stage (1)")
    parser.add_argument(
        "--teacher-width", type=float, default=1.0, help="teacher stage: width multiplier (1.0)"
    )
    parser.add_argument(
        "--tiny-per-class", type=int, default=500, help="tiny: train images per class (500)"
    )
    parser.add_argument("--quick", action="store_true", help="10 classes x 20 images, 2 iterations")
    parser.add_argument("--iterations", type=int, default=None, help="compress (5; --quick 2)")
    parser.add_argument("--codecs", default=None, help="raw,haba+idc (--quick: haba+idc)")
    parser.add_argument("--per-class", type=int, default=100, help="imagenet: N/10 and N")
    parser.add_argument("--jpegs-per-class", type=int, default=100, help="folder: 10 classes")
    parser.add_argument("--classes-per-iteration", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: all cores)")
    parser.add_argument("--in-memory", action="store_true", help="also large in-memory runs")
    parser.add_argument("--shuffle", action="store_true", help="labels in random order")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--generate", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.iterations is None:
        args.iterations = 2 if args.quick else 5
    if args.codecs is None:
        args.codecs = "haba+idc" if args.quick else ",".join(CODECS)
    counts = (args.iterations, args.per_class, args.jpegs_per_class, args.teacher_epochs)
    if min(*counts, args.tiny_per_class) < 1 or not args.teacher_width > 0:
        parser.error(
            "--iterations, --per-class, --jpegs-per-class, --tiny-per-class and "
            "--teacher-epochs must be at least 1, --teacher-width positive"
        )
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.generate is not None:
        generate(DataSet(**json.loads(args.generate)))
        return
    base = (args.workdir or Path(tempfile.gettempdir())).expanduser().resolve()
    if base == ROOT or ROOT in base.parents:
        raise SystemExit(f"--workdir {base} is inside the repository; choose a folder outside it")
    base.mkdir(parents=True, exist_ok=True)
    sets = plan_sets(args)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="habactl-scale-", dir=base))
    info = machine()
    settings = {
        "quick": args.quick,
        "iterations": args.iterations,
        "sets": [asdict(s) for s in sets],
        "stages": args.stages,
        "codecs": args.codecs,
        "threads": args.threads,
        "teacher_epochs": args.teacher_epochs,
        "teacher_width": args.teacher_width,
        "classes_per_iteration": args.classes_per_iteration,
    }
    bench = Bench(args, work)
    try:
        bench.baseline()
        for data in sets:
            bench.data_set(data)
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    import resource

    info["driver_peak_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(table(bench.rows, info, settings))
    if args.json is not None:
        payload = {
            "machine": info,
            "settings": settings,
            "rows": [asdict(r) for r in bench.rows],
            "ratios": ratio_lines(bench.rows),
        }
        args.json.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
