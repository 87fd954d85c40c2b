"""The manifest digest (format 1.2): how it is computed (format/SPEC.md §4, §5), what it
covers, and that `verify` refuses an archive with any damaged byte."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

import habactl.cli.inspect_cmd  # noqa: F401  (registers the commands)
import habactl.cli.verify  # noqa: F401
from habactl.cli.app import app
from habactl.codecs.spec import describe_pipeline
from habactl.format import (
    DEFAULT_LIMITS,
    FORMAT_VERSION,
    ArchiveError,
    open_archive,
    save_archive,
    save_legacy_archive,
    verify_archive,
    verify_report,
)
from habactl.format.digest import manifest_digest
from habactl.format.manifest import canonical_json, parse_json, validate_manifest
from habactl.training.dataset import HabaDataset
from helpers import make_manifest, make_tensors, one_error_line, rewrite, split_archive

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT / "format" / "vectors"
GOLDEN = ROOT / "format" / "golden" / "v1"
TAG = b"haba-manifest-digest-v1\x00"
runner = CliRunner()


def copy_of(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copyfile(GOLDEN / name, tmp_path / name))


def patch(path: Path, old: bytes, new: bytes) -> None:
    """Replace the one occurrence of ``old`` by ``new`` (same length) in place: the
    header length, every other byte and every digest stay as they are."""
    data = path.read_bytes()
    assert data.count(old) == 1 and len(old) == len(new)
    path.write_bytes(data.replace(old, new))


# --- the test vector and the canonical form ---------------------------------------------


def test_the_vector_digest_is_sha256_of_the_tag_and_the_canonical_text():
    text = (VECTORS / "manifest-digest.json").read_text(encoding="utf-8")
    canonical = (VECTORS / "manifest-digest.canonical.json").read_bytes()
    manifest = parse_json(text, "manifest")
    fields = {k: v for k, v in manifest.items() if k != "manifest_digest"}
    assert canonical_json(fields).encode("utf-8") == canonical
    expected = "sha256:" + hashlib.sha256(TAG + canonical).hexdigest()
    assert manifest["manifest_digest"] == expected == manifest_digest(manifest)
    # The text as found is not canonical (order, spaces, escapes, 1E-5): the digest is
    # of the parsed value, so a reader recomputes the canonical form.
    assert text.encode("utf-8") != canonical
    validate_manifest(manifest, DEFAULT_LIMITS, stages=describe_pipeline)  # a whole 1.2 manifest
    # The awkward values, spelled as SPEC §4 says.
    for spelled in (
        '"eps":1e-05',
        '"scale":1e+16',
        '"first exponent":1e+16',
        '"last fixed":9999999999999998.0',
        '"fixed from":0.0001',
        '"below fixed":9.999e-05',
        '"mantissa":1.5e-07',
        '"tenth":0.1',
        '"negative zero":-0.0',
        '"hundred":100.0',
        '"one":1.0',
        '"zero":0',
        '"large":1.7976931348623157e+308',
        '"smallest":5e-324',
        '"seed_big":123456789012345678901234567890',
        '"seed":18446744073709551615',
        '"std":[0.3081]',
        '"classes":["zéro","un","😀"]',
        '"keys":{"":6,"Z":2,"a":8,"a\\u0000":7,"z":1,"é":3,"！":4,"😀":5}',
        '"text":"tab\\there \\"quoted\\" back\\\\slash/\\nline\\r\\b\\f '
        '\\u0000 \\u001f \x7f \x85 é é 😀 \u2028"',
    ):
        assert spelled.encode("utf-8") in canonical, spelled


def spec_float(x: float) -> str:
    """SPEC §4's spelling of a non-integral number, from the shortest round-trip digits
    (taken from repr) and the layout rule the spec states (not from repr's layout)."""
    sign = "-" if math.copysign(1.0, x) < 0 else ""
    mantissa, _, exp = repr(abs(x)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    e = (int(exp) if exp else 0) + len(whole) - 1  # value = d1.d2d3... x 10^e
    if not exp and whole == "0":
        zeros = len(fraction) - len(fraction.lstrip("0"))
        e = -(zeros + 1)
    digits = digits.rstrip("0") or "0"
    if x == 0:
        return sign + "0.0"
    if -4 <= e < 16:
        if e >= 0:
            head, tail = digits[: e + 1].ljust(e + 1, "0"), digits[e + 1 :]
            return f"{sign}{head}.{tail or '0'}"
        return f"{sign}0.{'0' * (-e - 1)}{digits}"
    rest = f".{digits[1:]}" if len(digits) > 1 else ""
    return f"{sign}{digits[0]}{rest}e{'-' if e < 0 else '+'}{abs(e):02d}"


def test_float_spelling_is_the_rule_the_spec_states():
    edges = [0.1, 1e-05, 1e16, 1e15, 9999999999999998.0, 0.0001, 0.00009999, 1.5e-07, -0.0,
             0.0, 100.0, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, 1e22, 1e-7,
             123456.789, -2.5, 0.3333333333333333, 1e100, 12345678901234567.0]  # fmt: skip
    generator = random.Random(0)
    randoms = [struct.unpack("<d", generator.randbytes(8))[0] for _ in range(20_000)]
    randoms += [generator.uniform(-1e-3, 1e-3) for _ in range(5_000)]
    randoms += [float(generator.randrange(10**18)) for _ in range(5_000)]
    for x in edges + [r for r in randoms if math.isfinite(r)]:
        spelled = canonical_json(x)
        assert spelled == spec_float(x), x
        assert float(spelled) == x  # round-trips
        digits = len(spelled.split("e")[0].replace("-", "").replace(".", "").strip("0"))
        if digits > 1:  # shortest: one digit fewer does not round-trip
            assert float(f"{x:.{digits - 2}e}") != x, x


def spec_escape(c: str) -> str:
    """SPEC §4's escapes: `"`, `\\`, the five short forms, other C0 as lowercase \\u00XX."""
    short = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r"}
    short["\t"] = "\\t"
    if c in short:
        return short[c]
    return f"\\u{ord(c):04x}" if ord(c) < 0x20 else c


def test_string_escapes_are_the_ones_the_spec_lists():
    every = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    assert canonical_json(every) == '"' + "".join(spec_escape(c) for c in every) + '"'


def test_keys_sort_by_code_point_not_by_utf16_units():
    # U+FF01 sorts before U+1F600 by code point (and UTF-8 bytes); by UTF-16 units the
    # surrogate pair of U+1F600 (0xD83D ...) would come first.
    assert canonical_json({"😀": 1, "！": 2, "Z": 3, "a": 4}) == '{"Z":3,"a":4,"！":2,"😀":1}'


def test_integers_and_non_integers_stay_what_their_literal_says():
    value = parse_json('{"a": 1.0, "b": 1, "c": 1e2, "d": -0, "e": 1E0}', "manifest")
    assert canonical_json(value) == '{"a":1.0,"b":1,"c":100.0,"d":0,"e":1.0}'


# --- new archives -----------------------------------------------------------------------------


def test_a_new_archive_is_1_2_and_its_digest_covers_every_other_field(tmp_path):
    manifest = make_manifest()
    manifest["x-note"] = {"kept": [1.5, "é"]}
    path = save_archive(tmp_path / "n.haba", make_tensors(manifest), manifest)
    header, _ = split_archive(path.read_bytes())
    text = header["__metadata__"]["haba"]
    written = json.loads(text)
    assert written["format_version"] == FORMAT_VERSION == "1.2"
    # A writer's text is canonical: without the field, it is exactly what is hashed.
    field = f',"manifest_digest":"{written["manifest_digest"]}"'
    assert text.count(field) == 1
    hashed = text.replace(field, "").encode("utf-8")
    assert written["manifest_digest"] == "sha256:" + hashlib.sha256(TAG + hashed).hexdigest()
    assert b'"tensors":' in hashed and b'"content_digest":' in hashed and b'"x-note":' in hashed
    report = verify_report(path)
    assert report.problems == [] and report.manifest_checked


def test_the_writer_ignores_a_given_digest_and_refuses_older_versions(tmp_path):
    manifest = make_manifest()
    tensors = make_tensors(manifest)
    a = save_archive(tmp_path / "a.haba", tensors, manifest).read_bytes()
    stale = {**manifest, "manifest_digest": "sha256:" + "0" * 64}
    assert save_archive(tmp_path / "b.haba", tensors, stale).read_bytes() == a
    for old in ("1.0", "1.1"):
        with pytest.raises(ArchiveError, match=f"format_version '{old}': this writer writes 1.2"):
            save_archive(tmp_path / "c.haba", tensors, {**manifest, "format_version": old})


def test_the_legacy_writer_writes_what_habactl_wrote_before_1_2(tmp_path):
    manifest = make_manifest()
    path = save_legacy_archive(tmp_path / "old.haba", make_tensors(manifest), manifest)
    with open_archive(path) as archive:
        assert archive.manifest["format_version"] == "1.0"
        assert "manifest_digest" not in archive.manifest and not archive.manifest_checked
    with pytest.raises(ArchiveError, match="this writer writes 1.0"):
        newer = {**manifest, "format_version": "1.2"}
        save_legacy_archive(tmp_path / "x.haba", make_tensors(manifest), newer)


# --- damaged manifests --------------------------------------------------------------------------


def test_the_normalisation_edit_the_user_reported_is_refused(tmp_path):
    path = copy_of("raw-1.2.haba", tmp_path)
    assert runner.invoke(app, ["verify", str(path)]).exit_code == 0
    patch(path, b'"mean\\":[0.1307]', b'"mean\\":[0.1207]')  # one digit, in place
    line = one_error_line(runner.invoke(app, ["verify", str(path)]))
    assert line == "habactl: error: raw-1.2.haba: manifest: digest mismatch (manifest damaged)"
    # Everything that opens an archive refuses it the same way.
    assert "manifest: digest mismatch" in one_error_line(runner.invoke(app, ["inspect", str(path)]))
    with pytest.raises(ArchiveError, match="raw-1.2.haba: manifest: digest mismatch"):
        HabaDataset(path)
    # Asked not to verify, a reader reads the file as it is (SPEC §6).
    with open_archive(path, verify=False) as archive:
        assert archive.manifest["normalization"]["mean"] == [0.1207]


def test_every_flip_inside_the_dataset_fingerprint_is_refused(tmp_path):
    path = copy_of("haba-1.2.haba", tmp_path)
    data = path.read_bytes()
    start = data.index(b"sha256:" + b"0" * 64)  # provenance.dataset.fingerprint
    for i in range(start + 7, start + 7 + 64):
        for value in b"123456789abcdef":
            changed = bytearray(data)
            changed[i] = value
            path.write_bytes(bytes(changed))
            assert verify_archive(path) == [
                "haba-1.2.haba: manifest: digest mismatch (manifest damaged)"
            ]


@pytest.mark.parametrize("version", [b"1.0", b"1.1", b"1.3"])
def test_an_altered_format_version_is_refused(tmp_path, version):
    path = copy_of("raw-1.2.haba", tmp_path)
    patch(path, b'"format_version\\":\\"1.2\\"', b'"format_version\\":\\"' + version + b'\\"')
    # Still carrying its digest, a "1.0" or "1.1" manifest is checked against it.
    assert verify_archive(path) == ["raw-1.2.haba: manifest: digest mismatch (manifest damaged)"]


def test_a_1_2_manifest_without_its_digest_is_refused(tmp_path):
    manifest = make_manifest()
    path = save_archive(tmp_path / "d.haba", make_tensors(manifest), manifest)
    rewrite(path, lambda m: m.pop("manifest_digest"))
    assert verify_archive(path) == ["d.haba: manifest: manifest_digest: missing"]


def test_field_checks_come_before_the_digest(tmp_path):
    path = copy_of("raw-1.2.haba", tmp_path)
    patch(path, b'"epochs\\":1000', b'"epochs\\":0000')  # an int with leading zeros: no JSON
    assert "manifest: not valid JSON" in verify_archive(path)[0]
    path = copy_of("raw-1.2.haba", tmp_path)
    patch(path, b'"counts\\":\\"all\\"', b'"counts\\":\\"alm\\"')
    assert verify_archive(path) == [
        "raw-1.2.haba: manifest: storage.counts: 'alm' is not one of all, bases"
    ]


# --- older archives ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "version"), [("raw.haba", "1.0"), ("quantize-uint4-idc.haba", "1.1")]
)
def test_verify_says_an_older_archives_manifest_is_not_covered(name, version):
    result = runner.invoke(app, ["verify", str(GOLDEN / name)])
    assert result.exit_code == 0
    assert result.stderr.strip().endswith(
        f"{name}: intact (tensors); format {version} carries no manifest digest, so the "
        "manifest itself is not checked"
    )
    new = runner.invoke(app, ["verify", str(GOLDEN / "haba-1.2.haba")])
    assert new.exit_code == 0 and new.stderr.strip().endswith("haba-1.2.haba: intact")


# --- every single-byte change -----------------------------------------------------------------


def same_meaning(original: bytes, changed: bytes) -> bool:
    """Whether ``changed`` holds the same header (the manifest as a JSON value), tensor
    table and tensor bytes as ``original``: what a damaged byte may leave intact."""
    try:
        (n,) = struct.unpack("<Q", changed[:8])
        header = json.loads(changed[8 : 8 + n])
        header["__metadata__"]["haba"] = json.loads(header["__metadata__"]["haba"])
    except (ValueError, KeyError, TypeError, struct.error):
        return False
    (m,) = struct.unpack("<Q", original[:8])
    before = json.loads(original[8 : 8 + m])
    before["__metadata__"]["haba"] = json.loads(before["__metadata__"]["haba"])
    return n == m and header == before and changed[8 + n :] == original[8 + m :]


def every_value(byte: int) -> list[int]:
    return [v for v in range(256) if v != byte]


def bits_and_neighbours(byte: int) -> list[int]:
    """Each of the 8 bits flipped, and the byte plus and minus one."""
    return sorted({byte ^ (1 << k) for k in range(8)} | {(byte + 1) % 256, (byte - 1) % 256})


def manifest_bytes(data: bytes) -> range:
    """Where the manifest lies in the file: the JSON string value of the 'haba' key."""
    (n,) = struct.unpack("<Q", data[:8])
    start = data.index(b'"haba":"') + 7  # its opening quote
    rest = data[start : 8 + n].decode("utf-8")
    _, end = json.JSONDecoder().raw_decode(rest)  # just past its closing quote
    return range(start + 1, start + len(rest[: end - 1].encode("utf-8")))


def sweep(tmp_path: Path, name: str, header_values, data_values) -> dict[str, int]:
    """Change every byte of a golden archive, one change at a time: a byte of the length
    or the header to each of ``header_values(byte)``, a byte of the data section to each
    of ``data_values(byte)``. Each change must be refused unless it leaves the archive's
    meaning unchanged. A
    damaged byte of the manifest text is refused naming the manifest, unless it broke
    the header's JSON around it (a quote, a control character, invalid UTF-8)."""
    original = (GOLDEN / name).read_bytes()
    path = tmp_path / name
    path.write_bytes(original)
    (n,) = struct.unpack("<Q", original[:8])
    text = manifest_bytes(original)
    counts = {"refused": 0, "intact": 0, "manifest": 0}
    # The byte is changed in place (no truncation: rewriting a whole file each time is
    # slow on some file systems) and put back afterwards.
    fd = os.open(path, os.O_RDWR)
    try:
        for i, byte in enumerate(original):
            for value in (header_values if i < 8 + n else data_values)(byte):
                os.pwrite(fd, bytes([value]), i)
                problems = verify_archive(path)
                if not problems:
                    changed = bytearray(original)
                    changed[i] = value
                    assert same_meaning(original, bytes(changed)), (i, byte, value)
                    counts["intact"] += 1
                    continue
                counts["refused"] += 1
                if i in text and not problems[0].startswith(f"{name}: header: "):
                    assert "manifest" in problems[0], (i, byte, value, problems)
                    counts["manifest"] += 1
            os.pwrite(fd, bytes([byte]), i)
    finally:
        os.close(fd)
    return counts


@pytest.mark.slow
def test_every_single_byte_change_of_a_raw_archive_is_refused(tmp_path):
    """Every byte of the length and the header x all 255 other values (390,000 changes);
    the data section's bytes, which the tensors' SHA-256 guards whatever the new value,
    x each bit flipped and +-1 (all 255 values there would double the time)."""
    counts = sweep(tmp_path, "raw-1.2.haba", every_value, bits_and_neighbours)
    # What may stay intact does occur: padding spaces that become other JSON whitespace,
    # another spelling of an exponent (e -> E, 1e+16 -> 1e016).
    assert counts["intact"] == 18 and counts["refused"] > 390_000 and counts["manifest"] > 90_000


@pytest.mark.slow
def test_every_bit_flip_of_a_haba_archive_is_refused(tmp_path):
    """Every position x each bit flipped and +-1 (30,000 changes): all 255 values here
    would take minutes more; these reach every bit of every byte, each digit's
    neighbours, e <-> E."""
    counts = sweep(tmp_path, "haba-1.2.haba", bits_and_neighbours, bits_and_neighbours)
    assert counts["intact"] > 0 and counts["refused"] > 25_000 and counts["manifest"] > 1_000
