"""The .haba container: round trip, determinism, and every rejection in format/SPEC.md."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from habactl.errors import HabaError
from habactl.format import (
    DEFAULT_LIMITS,
    FORMAT_VERSION,
    Archive,
    ArchiveError,
    Limits,
    canonical_json,
    open_archive,
    save_archive,
    storage_account,
    verify_archive,
)
from habactl.format.account import Part
from helpers import (
    craft_archive,
    make_manifest,
    make_tensors,
    rejects,
    rewrite,
    split_archive,
)

# --- a saved toy archive -------------------------------------------------------------


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, dict, dict]:
    manifest = make_manifest()
    tensors = make_tensors(manifest)
    path = save_archive(tmp_path / "toy.haba", tensors, manifest)
    return path, tensors, manifest


# --- edits for rewrite() -------------------------------------------------------------


def put_tensor(name: str, tensor: torch.Tensor):
    """An edit_data that overwrites tensor `name` with same-sized `tensor`."""

    def edit(header: dict, body: bytearray) -> None:
        b, e = header[name]["data_offsets"]
        body[b:e] = tensor.contiguous().numpy().tobytes()

    return edit


# --- round trip --------------------------------------------------------------------


def test_round_trip(saved):
    path, tensors, manifest = saved
    with open_archive(path) as archive:
        assert isinstance(archive, Archive)
        assert archive.names() == ["bases", "labels"]
        loaded = archive.tensors()
        m = archive.manifest
    for name in tensors:
        assert torch.equal(loaded[name], tensors[name])
        assert loaded[name].dtype == tensors[name].dtype
    assert m["format"] == "haba" and m["format_version"] == FORMAT_VERSION == "1.2"
    assert {
        k: v
        for k, v in m.items()
        if k not in ("tensors", "content_digest", "manifest_digest", "format", "format_version")
    } == manifest
    assert m["tensors"]["bases"] == {
        "dtype": "F32",
        "shape": [6, 1, 4, 4],
        "sha256": hashlib.sha256(tensors["bases"].numpy().tobytes()).hexdigest(),
    }
    assert m["content_digest"].startswith("sha256:")
    assert verify_archive(path) == []


def test_round_trip_soft_labels_and_zca(tmp_path):
    manifest = make_manifest(
        labels="soft",
        shape=(3, 4, 4),
        normalization={"kind": "zca", "mean": [0.1, 0.2, 0.3], "std": [1.0, 1.0, 1.0], "eps": 0.1},
    )
    tensors = make_tensors(manifest)
    path = save_archive(tmp_path / "zca.haba", tensors, manifest)
    with open_archive(path) as archive:
        loaded = archive.tensors()
    assert set(loaded) == {"bases", "labels", "normalization.zca"}
    assert loaded["normalization.zca"].shape == (48, 48)
    assert torch.equal(loaded["labels"], tensors["labels"])


def test_one_metadata_key_holding_canonical_json(saved):
    path, _, _ = saved
    header, _ = split_archive(path.read_bytes())
    assert list(header["__metadata__"]) == ["haba"]
    text = header["__metadata__"]["haba"]
    assert text == canonical_json(json.loads(text))
    assert canonical_json({"b": 1, "a": [1.5, "é"]}) == '{"a":[1.5,"é"],"b":1}'


def test_bytes_are_deterministic(tmp_path):
    manifest = make_manifest()
    tensors = make_tensors(manifest)
    a = save_archive(tmp_path / "a.haba", tensors, manifest).read_bytes()
    # Same content given differently: other dict order, a non-contiguous tensor,
    # tuples instead of lists, a stale tensors table the writer must ignore.
    shuffled = {
        "labels": tensors["labels"],
        "bases": tensors["bases"].transpose(2, 3).contiguous().transpose(2, 3),
    }
    assert not shuffled["bases"].is_contiguous()
    other = copy.deepcopy(manifest)
    other["bases"]["shape"] = tuple(other["bases"]["shape"])
    other = dict(reversed(list(other.items())), tensors={"stale": 1})
    b = save_archive(tmp_path / "b.haba", shuffled, other).read_bytes()
    assert a == b


def test_pinned_bytes_of_a_tiny_archive():
    """Any change to the byte layout (ours or safetensors') breaks this on purpose:
    old archives must keep being reproduced byte for byte (SPEC.md §7)."""
    from habactl.format.writer import archive_bytes

    manifest = make_manifest(classes=2, per_class=1, shape=(1, 2, 2))
    tensors = {"bases": torch.arange(8.0).reshape(2, 1, 2, 2) / 8, "labels": torch.tensor([0, 1])}
    data = archive_bytes(tensors, manifest)
    assert len(data) == 1528
    assert (
        hashlib.sha256(data).hexdigest()
        == "4e712d7d9c1224f27a4ec49198049612eb4c6a32d5695ce40e3bc9c45babb71c"
    )
    # The same archive as format 1.0 (no manifest digest), as habactl wrote it before 1.2.
    data = archive_bytes(tensors, manifest, legacy=True)
    assert len(data) == 1432
    assert (
        hashlib.sha256(data).hexdigest()
        == "92504d1c5889e4ecbb00926b78e1d48335e2e4673d3ab8374b74d15765453470"
    )


def test_content_digest_framing_is_the_spec(saved):
    path, tensors, _ = saved
    u64 = lambda n: struct.pack("<Q", n)  # noqa: E731
    stream = b"haba-content-digest-v1\x00" + u64(2)
    for name, dtype in (("bases", b"F32"), ("labels", b"I64")):  # name order
        data = tensors[name].numpy().tobytes()
        shape = tensors[name].shape
        stream += u64(len(name)) + name.encode() + u64(3) + dtype
        stream += u64(len(shape)) + b"".join(u64(d) for d in shape) + u64(len(data)) + data
    expected = "sha256:" + hashlib.sha256(stream).hexdigest()
    assert open_archive(path).manifest["content_digest"] == expected


def test_lazy_tensor_access_and_errors(saved):
    path, tensors, _ = saved
    archive = open_archive(path)
    assert torch.equal(archive.tensor("labels"), tensors["labels"])
    with pytest.raises(ArchiveError, match="'nope': no such tensor"):
        archive.tensor("nope")
    archive.close()
    with pytest.raises(ArchiveError, match="closed"):
        archive.tensor("bases")


def test_error_type_is_haba_error():
    assert issubclass(ArchiveError, HabaError)


# --- storage account ---------------------------------------------------------------


def test_storage_account_raw_hard_labels(saved):
    path, _, _ = saved
    with open_archive(path) as archive:
        account = storage_account(archive.manifest)
    assert account.parts["bases"] == Part(96, 384, True)
    assert account.parts["labels"] == Part(6, 48, False)
    assert account.parts["hallucinators"].values == 0
    assert account.stored_values == 96 and account.stored_bytes == 432
    assert account.budget_values == 2 * 3 * 16
    assert account.ratio == 1.0 and account.claim_values == 96
    assert account.note is None and "note" not in account.to_json()


def test_storage_account_soft_labels_counted_zca_not(tmp_path):
    manifest = make_manifest(
        labels="soft",
        counts="bases",
        normalization={"kind": "zca", "mean": [0.0], "std": [1.0], "eps": 0.1},
    )
    path = save_archive(tmp_path / "s.haba", make_tensors(manifest), manifest)
    account = storage_account(open_archive(path).manifest)
    assert account.parts["labels"] == Part(18, 72, True)
    assert account.parts["normalization"] == Part(256, 1024, False)
    assert account.stored_values == 96 + 18
    assert account.claim_values == 96 and "not counted" in account.note


# --- writer ----------------------------------------------------------------------------


def test_refuses_existing_target_without_overwrite(saved):
    path, tensors, manifest = saved
    before = path.read_bytes()
    with pytest.raises(ArchiveError, match="toy.haba: already exists; pass overwrite=True"):
        save_archive(path, tensors, manifest)
    assert path.read_bytes() == before
    tensors = {**tensors, "bases": tensors["bases"] + 1}
    save_archive(path, tensors, manifest, overwrite=True)
    assert torch.equal(open_archive(path).tensor("bases"), tensors["bases"])


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda m, t: t.pop("labels"), "tensor 'labels': missing"),
        (
            lambda m, t: t.update(extra=torch.zeros(1)),
            "tensor 'extra': not described by the manifest",
        ),
        (lambda m, t: t.update(bases=t["bases"].double()), "tensor 'bases': is torch.float64"),
        (
            lambda m, t: t.update(bases=t["bases"][:, :, :2]),
            "the manifest implies F32 [6, 1, 4, 4]",
        ),
        (lambda m, t: t["bases"].__setitem__((0, 0, 0, 0), float("nan")), "NaN or infinite"),
        (lambda m, t: t["labels"].__setitem__(0, 7), "label 7 at index 0 is out of range"),
        (lambda m, t: m.update(format_version="1.1"), "this writer writes 1.2"),
        (lambda m, t: m["provenance"].update(seed=float("nan")), "canonical JSON"),
        (lambda m, t: m.update(unknown=1), "unknown field 'unknown'"),
    ],
)
def test_writer_validates_before_writing(tmp_path, change, fragment):
    manifest = make_manifest()
    tensors = make_tensors(manifest)
    change(manifest, tensors)
    with pytest.raises(ArchiveError) as info:
        save_archive(tmp_path / "bad.haba", tensors, manifest)
    assert str(info.value).startswith("bad.haba: ") and fragment in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_manifest_over_header_limit(tmp_path):
    manifest = make_manifest()
    manifest["x-padding"] = "p" * DEFAULT_LIMITS.max_header_bytes
    with pytest.raises(ArchiveError, match="header: declares .* more than the limit"):
        save_archive(tmp_path / "big.haba", make_tensors(manifest), manifest)
    assert list(tmp_path.iterdir()) == []


def _boom(*args, **kwargs):
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("target", ["replace", "fsync", "write"])
def test_interrupted_write_leaves_previous_file(saved, monkeypatch, target):
    path, tensors, manifest = saved
    before = path.read_bytes()
    if target == "write":
        real_write = os.write
        calls = []

        def write(fd, data):  # the first chunk lands, then the disk fills up
            calls.append(1)
            if len(calls) > 1:
                _boom()
            return real_write(fd, data[: len(data) // 2])

        monkeypatch.setattr(os, "write", write)
    else:
        monkeypatch.setattr(os, target, _boom)
    with pytest.raises(ArchiveError, match="toy.haba: cannot write: No space left"):
        save_archive(path, {**tensors, "bases": tensors["bases"] * 2}, manifest, overwrite=True)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["toy.haba"]


def test_interrupted_new_file_leaves_nothing(tmp_path, monkeypatch):
    manifest = make_manifest()
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        save_archive(tmp_path / "new.haba", make_tensors(manifest), manifest)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_sigkill_mid_write_never_leaves_a_partial_target(saved):
    """A killed writer cannot clean up: it may leave a temp file, never a partial target."""
    path, _, _ = saved
    before = path.read_bytes()
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from helpers import make_manifest, make_tensors
        from habactl.format import save_archive
        real_write = os.write
        def write(fd, data):  # half the bytes reach the disk, then the process dies
            real_write(fd, data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        os.write = write
        m = make_manifest()
        save_archive({str(path)!r}, make_tensors(m, seed=1), m, overwrite=True)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-2000:]
    assert path.read_bytes() == before
    leftovers = [p.name for p in path.parent.iterdir() if p != path]
    assert len(leftovers) == 1 and leftovers[0].startswith(".toy.haba.tmp-")


# --- the file and its header -------------------------------------------------------------


@pytest.mark.parametrize("cut", ["empty", 4, 8, "mid-header", "mid-data", "last-byte"])
def test_truncation(saved, cut):
    path, _, _ = saved
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    keep = {
        "empty": 0,
        "mid-header": 8 + n // 2,
        "mid-data": 8 + n + (len(data) - 8 - n) // 2,
        "last-byte": len(data) - 1,
    }.get(cut, cut)
    path.write_bytes(data[:keep])
    message = rejects(path)
    assert "truncated" in message
    assert verify_archive(path) == [message]


def test_hostile_header_length_is_refused_before_reading(tmp_path):
    path = tmp_path / "hostile.haba"
    path.write_bytes(craft_archive(b"{}", length=2**40))
    rejects(path, "header: declares 1099511627776 bytes, more than the limit")


def test_manifest_too_big_for_the_limits(saved):
    path, _, _ = saved
    rejects(path, "more than the limit 256", limits=Limits(max_header_bytes=256))


@pytest.mark.parametrize(
    "raw, fragment",
    [
        (b"garbage!", "does not start with '{'"),
        (b"{not json", "header: not valid JSON"),
        (b"[1, 2]", "does not start with '{'"),
        (b'{"\xff": 1}', "not UTF-8"),
        (b'{"a": 1, "a": 2}', "duplicate key 'a'"),
        (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "header: not valid JSON"),
        (b'{"a": 1' + b"0" * 100_000 + b"}", "header: not valid JSON"),
        (b'{"a": 1e400}', "number 1e400 is out of range"),
        (b"{}", "no __metadata__"),
        (b'{"__metadata__": {"haba": "{}", "other": "x"}}', "exactly one key 'haba'"),
        (b'{"__metadata__": {"haba": "{\\"format\\": NaN}"}}', "NaN is not allowed"),
        (b'{"__metadata__": {"haba": "[]"}}', "manifest: must be a JSON object"),
        (
            b'{"__metadata__": {"haba": "{}"}, '
            b'"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}',
            "tensor 't': data_offsets [0, 4] do not hold 8 bytes",
        ),
        (
            b'{"__metadata__": {"haba": "{}"}, '
            b'"t": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 4]}}',
            "unknown dtype 'Q9'",
        ),
    ],
)
def test_garbage_headers(tmp_path, raw, fragment):
    path = tmp_path / "garbage.haba"
    path.write_bytes(craft_archive(raw))
    rejects(path, fragment)


def test_trailing_bytes_and_overlapping_offsets(saved):
    path, _, _ = saved
    data = path.read_bytes()
    path.write_bytes(data + b"\0" * 8)
    rejects(path, "8 bytes after the last tensor")
    header, body = split_archive(data)
    assert header["labels"]["data_offsets"] == [0, 48]
    header["bases"]["data_offsets"] = [0, 384]  # bases aliasing the labels bytes
    path.write_bytes(craft_archive(header, body))
    rejects(path, "overlapping or gapped data")


def test_writer_needs_an_existing_folder(tmp_path):
    manifest = make_manifest()
    with pytest.raises(ArchiveError, match="x.haba: folder .* does not exist"):
        save_archive(tmp_path / "absent" / "x.haba", make_tensors(manifest), manifest)


def test_missing_file_directory_and_plain_safetensors(tmp_path):
    rejects(tmp_path / "absent.haba", "no such file")
    (tmp_path / "dir.haba").mkdir()
    rejects(tmp_path / "dir.haba", "not a regular file")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, tmp_path / "plain.haba")
    rejects(tmp_path / "plain.haba", "no __metadata__")


# --- manifest: format and versions --------------------------------------------------------


def test_bad_format_name(saved):
    path, _, _ = saved
    rewrite(path, lambda m: m.update(format="zip"))
    rejects(path, "manifest: format is 'zip', expected 'haba'")


def test_newer_major_version(saved):
    path, _, _ = saved
    # A 2.x manifest may look entirely different: the version is checked first.
    rewrite(path, lambda m: (m.update(format_version="2.0", brand_new={"x": 1}), m.pop("classes")))
    rejects(path, "was written by a newer habactl (format 2.x); this reader understands 1.x")


@pytest.mark.parametrize("version", ["1", "v1.0", "1.0.0", "01.0", 1.0, "0.9"])
def test_malformed_version(saved, version):
    path, _, _ = saved
    rewrite(path, lambda m: m.update(format_version=version))
    rejects(path, "manifest: format_version")


def test_newer_minor_with_ignorable_fields_is_read(saved):
    path, tensors, _ = saved

    def edit(m):
        m.update({"format_version": "1.7", "x-future": {"anything": [1, 2]}})
        m["image"]["x-note"] = "ignorable"
        m["storage"]["x-vendor"] = 3

    rewrite(path, edit)
    with open_archive(path) as archive:
        assert archive.manifest["x-future"] == {"anything": [1, 2]}
        assert torch.equal(archive.tensors()["bases"], tensors["bases"])


def test_newer_minor_with_unknown_field_is_refused(saved):
    path, _, _ = saved
    rewrite(path, lambda m: m["image"].update(depth=3) or m.update(format_version="1.5"))
    rejects(path, "manifest: image: unknown field 'depth'", "format 1.5 is newer", "'x-' prefix")


def test_unknown_field_at_current_version(saved):
    path, _, _ = saved
    rewrite(path, lambda m: m.update(comment="hi"))
    message = rejects(path, "manifest: unknown field 'comment'")
    assert "newer" not in message


# --- manifest: fields ----------------------------------------------------------------------


def _set(path_in_manifest: str, value):
    def edit(m):
        *parents, last = path_in_manifest.split(".")
        for key in parents:
            m = m[key]
        if value is KeyError:
            del m[last]
        else:
            m[last] = value

    return edit


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("classes", [], "classes: has 0 classes"),
        ("classes", ["a", "a", "b"], "class 'a' appears twice"),
        ("classes", ["a", 1, "b"], "classes[1]: must be a string"),
        ("classes", ["a", "\x1b[31mred", "b"], "control characters"),
        ("image.channels", 0, "image.channels: 0 is out of range"),
        ("image.height", 5000, "image.height: 5000 is out of range (1 to 4096)"),
        ("image.width", True, "image.width: must be an integer, got a boolean"),
        ("bases.count", 7, "bases.per_class: sums to 6, but bases.count is 7"),
        ("bases.per_class", [2, 2], "bases.per_class: has 2 entries, expected 3"),
        ("bases.shape", [1, 4], "bases.shape: has 2 entries"),
        ("labels.kind", "fuzzy", "labels.kind: 'fuzzy' is not one of hard, soft"),
        ("labels", KeyError, "manifest: labels: missing"),
        ("normalization.std", [0.0], "normalization.std[0]: 0.0 must be > 0"),
        ("normalization.mean", [0.1, 0.2], "normalization.mean: has 2 entries, expected 1"),
        ("normalization.eps", 0.1, "normalization: unknown field 'eps'"),
        ("normalization.kind", "zca", "normalization.eps: missing"),
        ("training.learned_lr", -1, "training.learned_lr: -1 must be > 0"),
        ("training.recommended.epochs", 0, "epochs: 0 is out of range"),
        ("provenance.dataset.fingerprint", "md5:1", "is not 'sha256:' and 64 hex digits"),
        ("provenance.created", "yesterday", "provenance.created: 'yesterday' is not a UTC time"),
        ("provenance.hyperparameters", [], "hyperparameters: must be an object"),
        ("storage.counts", "some", "storage.counts: 'some' is not one of all, bases"),
        ("storage.budget_values", 1, "storage.budget_values: is 1, but ipc x classes x C*H*W = 96"),
        ("pipeline", [{"name": "upsample"}], "pipeline[0].version: missing"),
        ("pipeline", {}, "pipeline: must be a list"),
        ("content_digest", "sha256:xyz", "content_digest: 'sha256:xyz' is not"),
        ("tensors.bases.sha256", "00", "tensors['bases'].sha256"),
        ("tensors.bases.dtype", "F64", "tensor 'bases': manifest records F64 [6, 1, 4, 4]"),
        (
            "tensors.ghost",
            {"dtype": "F32", "shape": [1], "sha256": "0" * 64},
            "manifest: tensors: entry 'ghost' names no tensor",
        ),
        ("tensors.labels", KeyError, "manifest: tensors: no entry for tensor 'labels'"),
    ],
)
def test_invalid_fields(saved, field, value, fragment):
    path, _, _ = saved
    rewrite(path, _set(field, value))
    rejects(path, fragment)


def test_class_and_shape_limits(saved):
    path, _, _ = saved
    rejects(path, "classes: has 3 classes, allowed 1 to 2", limits=Limits(max_classes=2))
    rejects(path, "image.height: 4 is out of range (1 to 3)", limits=Limits(max_image_side=3))
    rejects(path, "expansion bomb", limits=Limits(max_expanded_values=95))


def test_zca_dimension_limit(tmp_path):
    manifest = make_manifest(normalization={"kind": "zca", "mean": [0.0], "std": [1.0], "eps": 0.1})
    path = save_archive(tmp_path / "z.haba", make_tensors(manifest), manifest)
    rejects(path, "ZCA matrix of dimension 16 exceeds the limit 15", limits=Limits(max_zca_dim=15))


# --- tensors against the manifest -------------------------------------------------------------


def test_missing_tensor(saved):
    path, _, _ = saved
    header, body = split_archive(path.read_bytes())
    del header["labels"]
    # Drop the labels bytes too, so that only the missing name is wrong.
    b, e = header["bases"]["data_offsets"]
    header["bases"]["data_offsets"] = [0, e - b]
    path.write_bytes(craft_archive(header, body[b:e]))
    rejects(path, "tensor 'labels': missing (the manifest implies it)")


def test_extra_tensor(saved):
    path, _, _ = saved
    header, body = split_archive(path.read_bytes())
    header["sneaky"] = {"dtype": "U8", "shape": [8], "data_offsets": [len(body), len(body) + 8]}
    path.write_bytes(craft_archive(header, body + b"\xcc" * 8))
    rejects(path, "tensor 'sneaky': not described by the manifest")


def test_dtype_and_shape_mismatch(saved):
    path, _, _ = saved
    data = path.read_bytes()
    header, body = split_archive(data)
    header["labels"]["dtype"] = "F64"  # same byte count: 6 x I64 == 6 x F64
    path.write_bytes(craft_archive(header, body))
    rejects(path, "tensor 'labels': is F64 [6], the manifest implies I64 [6]")
    header, body = split_archive(data)
    header["bases"]["shape"] = [6, 1, 2, 8]
    path.write_bytes(craft_archive(header, body))
    rejects(path, "tensor 'bases': is F32 [6, 1, 2, 8], the manifest implies F32 [6, 1, 4, 4]")


# --- tensor values and digests ------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values(saved, bad):
    path, tensors, _ = saved
    bases = tensors["bases"].clone()
    bases[3, 0, 1, 2] = bad
    rewrite(path, edit_data=put_tensor("bases", bases), fix_digests=True)
    rejects(path, "tensor 'bases': 1 values are NaN or infinite", verify_all=True)
    with open_archive(path, verify=False) as archive:  # verify off: read as is
        assert not torch.isfinite(archive.tensor("bases")).all()


@pytest.mark.parametrize(
    "labels, fragment",
    [
        ([0, 0, 1, 1, 2, 3], "label 3 at index 5 is out of range (0 to 2)"),
        ([0, 0, 1, 1, -1, 2], "label -1 at index 4 is out of range"),
        ([0, 0, 0, 1, 2, 2], "class 0 has 3 labels, bases.per_class says 2"),
        ([0, 1, 0, 1, 2, 2], "labels are not sorted by class"),
    ],
)
def test_hard_labels(saved, labels, fragment):
    path, _, _ = saved
    rewrite(path, edit_data=put_tensor("labels", torch.tensor(labels)), fix_digests=True)
    rejects(path, "tensor 'labels': " + fragment, verify_all=True)


def test_negative_soft_labels(tmp_path):
    manifest = make_manifest(labels="soft")
    tensors = make_tensors(manifest)
    path = save_archive(tmp_path / "soft.haba", tensors, manifest)
    labels = tensors["labels"].clone()
    labels[0, 0] = -0.5
    rewrite(path, edit_data=put_tensor("labels", labels), fix_digests=True)
    rejects(path, "tensor 'labels': 1 soft label values are negative", verify_all=True)


def test_flipped_byte_is_named(saved):
    path, _, _ = saved

    def flip(header, body):
        for name in ("bases", "labels"):
            b, _ = header[name]["data_offsets"]
            body[b + 1] ^= 0x40

    rewrite(path, edit_data=flip)
    problems = verify_archive(path)
    assert problems == [
        "toy.haba: tensor 'bases': sha256 mismatch (data damaged)",
        "toy.haba: tensor 'labels': sha256 mismatch (data damaged)",
    ]
    with open_archive(path) as archive:  # the header is fine: opening succeeds
        with pytest.raises(ArchiveError, match="'bases': sha256 mismatch"):
            archive.tensor("bases")


def test_edited_content_digest(saved):
    path, _, _ = saved
    rewrite(path, lambda m: m.update(content_digest="sha256:" + "0" * 64))
    rejects(path, "content_digest mismatch", verify_all=True)
    assert verify_archive(path) == [
        "toy.haba: content_digest mismatch (manifest edited or damaged)"
    ]
