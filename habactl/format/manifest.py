"""Canonical JSON, version rules and validation of the manifest (format/SPEC.md §3-4).

``validate_manifest`` checks every field and returns a ``Layout``: the tensors the
manifest implies (name -> dtype, shape) and the size of the decoded data set. It is
pure: nothing is allocated and no decoder is built, so it can run on a hostile header.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from habactl.errors import HabaError
from habactl.format.account import budget_values
from habactl.format.errors import ArchiveError, quote
from habactl.format.labels import (
    CROPS_MINOR,
    LABELS_MINOR,
    check_labels_entry,
    crop_rules,
    crop_tensors,
    label_rules,
    label_tensors,
)
from habactl.format.limits import Limits

# (pipeline entries, bases shape) -> an object with out_shape, expansion and params
# (name -> shape); raises for an unknown stage or an invalid configuration.
StageLookup = Callable[[list[dict[str, Any]], tuple[int, ...]], Any]

FORMAT_NAME = "haba"
# Writers emit FORMAT_VERSION, 1.2: every archive carries a manifest digest since 1.2
# (format/SPEC.md §7); an archive with a 1.3 labels form or a recorded teacher is 1.3,
# one with per-crop labels 1.4 (format/labels.py). The reader reads up to
# READER_VERSION; 1.0 and 1.1 archives (no manifest digest) and 1.2 archives are read as
# before.
FORMAT_VERSION = "1.2"
READER_VERSION = "1.4"
_READER_MAJOR, _READER_MINOR = 1, 4
# The first minor version whose manifests must carry ``manifest_digest``.
MANIFEST_DIGEST_MINOR = 2

_VERSION_RE = re.compile(r"(0|[1-9][0-9]{0,5})\.(0|[1-9][0-9]{0,5})")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
# 20 to 30 characters; the ranges here, the day of the month in _calendar_date.
_CREATED_RE = re.compile(
    r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]{1,9})?Z"
)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SURROGATE_RE = re.compile(r"[\ud800-\udfff]")  # only lone ones survive JSON decoding
_MAX_TEXT = 1024  # characters in one name or label: they end up on terminals

WRITER_FIELDS = ("tensors", "content_digest", "manifest_digest")


# --- canonical JSON ---------------------------------------------------------------


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces, UTF-8 (not \\u escapes), no NaN/Infinity."""
    try:
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
        text.encode("utf-8")  # lone surrogates cannot be stored
    except (TypeError, ValueError, RecursionError) as error:
        raise ArchiveError(f"manifest: not representable as canonical JSON: {error}") from None
    return text


class _DuplicateKey(ValueError):
    pass


def _pairs_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # JSON parsers disagree on duplicate keys (first wins / last wins), which would let
    # one file mean two things to two readers: refuse them.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(f"duplicate key {quote(key)}")
        result[key] = value
    return result


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # "1e400" parses to inf
        raise ValueError(f"number {text[:40]} is out of range")
    return value


# Python refuses to parse integers above 4300 digits itself; the bound here is lower and
# explicit so that every reader behaves the same: a double holds at most 309 digits.
_MAX_INT_DIGITS = 400


def _bounded_int(text: str) -> int:
    digits = len(text) - (1 if text.startswith("-") else 0)
    if digits > _MAX_INT_DIGITS:
        raise ValueError(f"integer of {digits} digits is out of range")
    value = int(text)
    try:
        float(value)  # the spec: numbers a double cannot hold are refused, integers too
    except OverflowError:
        raise ValueError(
            f"integer {text[:40]}... is out of range (a double cannot hold it)"
        ) from None
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def parse_json(text: str | bytes, part: str) -> Any:
    """Strict JSON: no duplicate keys, no NaN/Infinity, no number (integer or not) that
    overflows a double, no lone surrogate in any string."""
    try:
        value = json.loads(
            text,
            object_pairs_hook=_pairs_without_duplicates,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
        )
    except (ValueError, RecursionError, UnicodeDecodeError) as error:
        message = str(error) if not isinstance(error, RecursionError) else "nested too deeply"
        raise ArchiveError(f"{part}: not valid JSON: {message}") from None
    _no_lone_surrogates(value, part)
    return value


# --- versions ------------------------------------------------------------------------


def check_version(manifest: Mapping[str, Any]) -> tuple[int, int]:
    """Check ``format`` and ``format_version``; return (major, minor).

    Runs before any other field is looked at, so that a 2.x file gets the "newer
    habactl" message and not a list of fields this reader does not know.
    """
    name = manifest.get("format")
    if name != FORMAT_NAME:
        raise ArchiveError(
            f"manifest: format is {quote(name)}, expected 'haba' (not a .haba archive)"
        )
    version = manifest.get("format_version")
    match = _VERSION_RE.fullmatch(version) if isinstance(version, str) else None
    if match is None:
        raise ArchiveError(
            f"manifest: format_version {quote(version)} is not of the form 'MAJOR.MINOR'"
        )
    major, minor = int(match.group(1)), int(match.group(2))
    if major > _READER_MAJOR:
        raise ArchiveError(
            f"manifest: format_version {version}: was written by a newer habactl (format "
            f"{major}.x); this reader understands {_READER_MAJOR}.x, upgrade habactl to read it"
        )
    if major < _READER_MAJOR:
        raise ArchiveError(f"manifest: format_version {version} is not a released version")
    return major, minor


# --- the layout ----------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """What a valid manifest implies: the tensors it must hold and the size of the decoded
    data set (the distillation planner's budget is a ``distill.planner.Plan``)."""

    tensors: dict[str, tuple[str, tuple[int, ...]]]  # name -> (dtype, shape)
    classes: int
    per_class: tuple[int, ...]
    label_kind: str
    image_shape: tuple[int, int, int]
    expansion: int
    expanded_items: int  # bases.count * expansion
    # Content rules the pipeline's stages add (tensor name -> values -> problem or None).
    rules: Mapping[str, Callable[[Any], str | None]] = field(default_factory=dict)


# --- field checks --------------------------------------------------------------------


class _Checker:
    """Field checks that share the limits and the version (for better messages)."""

    def __init__(self, limits: Limits, minor: int) -> None:
        self.limits = limits
        self.minor = minor

    def fail(self, path: str, what: str) -> ArchiveError:
        return ArchiveError(f"manifest: {path}: {what}")

    def obj(
        self,
        value: Any,
        path: str,
        required: Mapping[str, Callable[[Any, str], Any]],
        optional: Mapping[str, Callable[[Any, str], Any]] | None = None,
    ) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, f"must be an object, got {_kind(value)}")
        optional = optional or {}
        for key in value:
            if key in required or key in optional or key.startswith("x-"):
                continue
            hint = ""
            if self.minor > _READER_MINOR:
                hint = (
                    f" (format 1.{self.minor} is newer than this reader's {READER_VERSION}, and "
                    "the field is not marked ignorable with an 'x-' prefix: upgrade habactl)"
                )
            where = f"{path}: " if path else ""
            raise ArchiveError(f"manifest: {where}unknown field {quote(key)}{hint}")
        for key, check in required.items():
            if key not in value:
                raise self.fail(_join(path, key), "missing")
            check(value[key], _join(path, key))
        for key, check in optional.items():
            if key in value:
                check(value[key], _join(path, key))
        return value

    def text(self, value: Any, path: str) -> str:
        if not isinstance(value, str):
            raise self.fail(path, f"must be a string, got {_kind(value)}")
        if not value or len(value) > _MAX_TEXT:  # characters = Unicode code points
            raise self.fail(path, f"must have 1 to {_MAX_TEXT} characters")
        if _CONTROL_RE.search(value):
            raise self.fail(path, "must not contain control characters")
        return value

    def integer(self, value: Any, path: str, low: int = 0, high: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(path, f"must be an integer, got {_kind(value)}")
        if value < low or (high is not None and value > high):
            bound = f"{low} to {high}" if high is not None else f">= {low}"
            raise self.fail(path, f"{value} is out of range ({bound})")
        return value

    def number(self, value: Any, path: str, *, positive: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(path, f"must be a number, got {_kind(value)}")
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise self.fail(path, f"{value} must be {'> 0' if positive else '>= 0'}")
        return float(value)

    def fraction(self, value: Any, path: str) -> float:
        number = self.number(value, path, positive=True)
        if number > 1:
            raise self.fail(path, f"{value} is out of range (> 0 and <= 1)")
        return number

    def signed_number(self, value: Any, path: str) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise self.fail(path, f"must be a finite number, got {_kind(value)}")
        return float(value)

    def choice(self, value: Any, path: str, choices: tuple[str, ...]) -> str:
        if value not in choices:
            raise self.fail(path, f"{quote(value)} is not one of {', '.join(choices)}")
        return value

    def pattern(self, value: Any, path: str, regex: re.Pattern[str], what: str) -> str:
        if not isinstance(value, str) or not regex.fullmatch(value):
            raise self.fail(path, f"{quote(value)} is not {what}")
        return value

    def array(self, value: Any, path: str, length: int | None = None) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(path, f"must be a list, got {_kind(value)}")
        if length is not None and len(value) != length:
            raise self.fail(path, f"has {len(value)} entries, expected {length}")
        return value

    def free_object(self, value: Any, path: str) -> dict[str, Any]:
        # Objective hyperparameters: their keys are not manifest fields.
        if not isinstance(value, dict):
            raise self.fail(path, f"must be an object, got {_kind(value)}")
        return value


def _calendar_date(c: _Checker, value: str, path: str) -> str:
    """The date of a ``created`` that matched the pattern must exist (2026-02-30 does not)."""
    year, month, day = int(value[0:4]), int(value[5:7]), int(value[8:10])
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    days = (31, 29 if leap else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)[month - 1]
    if day > days:
        raise c.fail(path, f"{quote(value)} is not a calendar date")
    return value


def _no_lone_surrogates(value: Any, part: str) -> None:
    # JSON lets "\ud800" through as an escape; it is no Unicode character, cannot be
    # written as UTF-8 and breaks terminals and other parsers: refused anywhere.
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE_RE.search(item):
                raise ArchiveError(
                    f"{part}: not valid JSON: a string holds a lone surrogate ({quote(item)})"
                )
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def _prod(shape: tuple[int, ...] | list[int]) -> int:
    return math.prod(shape)


def validate_manifest(
    manifest: Any, limits: Limits, *, stages: StageLookup, written: bool = True
) -> Layout:
    """Check every field of ``manifest``; return what it implies.

    ``stages`` describes a pipeline (``habactl.codecs.describe_pipeline`` in habactl):
    passed in, so that this module depends on no codec and a caller can bring its own
    registry. ``written=False`` is the writer's check of the manifest it was given: the
    fields the writer fills in (``tensors``, ``content_digest``, ``manifest_digest``) may
    then be absent. ``manifest_digest`` is required from format 1.2 on; in an older
    manifest it is allowed (and checked by the reader like any other: it can only be
    there when a 1.2 archive's version was altered).
    """
    if not isinstance(manifest, dict):
        raise ArchiveError(f"manifest: must be a JSON object, got {_kind(manifest)}")
    _, minor = check_version(manifest)
    c = _Fields(limits, minor, manifest)
    fields, writer_fields = c.top_level(), c.writer_fields()
    since_1_2 = {"manifest_digest": c.digest}
    if not written:
        c.obj(manifest, "", fields, {**writer_fields, **since_1_2})
    elif minor >= MANIFEST_DIGEST_MINOR:
        c.obj(manifest, "", {**fields, **writer_fields, **since_1_2})
    else:
        c.obj(manifest, "", {**fields, **writer_fields}, since_1_2)
    return _layout(manifest, c, stages)


class _Fields(_Checker):
    """The check of each manifest field, by the field's name; fields whose rules read
    another field (a list per class, per channel) read it from ``manifest``, which the
    top-level order has checked first."""

    def __init__(self, limits: Limits, minor: int, manifest: dict[str, Any]) -> None:
        super().__init__(limits, minor)
        self.manifest = manifest

    def top_level(self) -> dict[str, Callable[[Any, str], Any]]:
        return {
            "format": lambda v, p: None,  # checked by check_version
            "format_version": lambda v, p: None,
            "classes": self.classes,
            "image": self.image,
            "bases": self.bases,
            "labels": self.labels,
            "pipeline": self.pipeline,
            "normalization": self.normalization,
            "training": self.training,
            "provenance": self.provenance,
            "storage": self.storage,
        }

    def writer_fields(self) -> dict[str, Callable[[Any, str], Any]]:
        return {"tensors": self.tensors, "content_digest": self.digest}

    def labels(self, value: Any, path: str) -> None:
        # Format 1.3 adds the storage form of soft labels (habactl/format/labels.py).
        forms: dict[str, Callable[[Any, str], Any]] = {}
        if self.minor >= LABELS_MINOR:
            forms = {"form": lambda v, p: None, "k": lambda v, p: None}
        if self.minor >= CROPS_MINOR:  # 1.4: per-crop labels
            forms["crops"] = lambda v, p: None
        self.obj(value, path, {"kind": lambda x, q: self.choice(x, q, ("hard", "soft"))}, forms)
        problem = check_labels_entry(value, len(self.manifest["classes"]))
        if problem:
            raise ArchiveError(f"manifest: {problem}")

    def teacher(self, value: Any, path: str) -> None:
        # Format 1.3: the teacher network whose probabilities the soft labels are.
        self.obj(
            value,
            path,
            {
                "name": self.text,
                "sha256": lambda v, p: self.pattern(v, p, _HEX64_RE, "64 lowercase hex digits"),
                "arch": self.text,
                "temperature": lambda v, p: self.number(v, p, positive=True),
            },
        )

    def classes(self, value: Any, path: str) -> None:
        lim = self.limits
        self.array(value, path)
        if not 1 <= len(value) <= lim.max_classes:
            raise self.fail(path, f"has {len(value)} classes, allowed 1 to {lim.max_classes}")
        for i, name in enumerate(value):
            self.text(name, f"{path}[{i}]")
        seen: set[str] = set()
        for name in value:
            if name in seen:
                raise self.fail(path, f"class {quote(name)} appears twice")
            seen.add(name)

    def side(self, value: Any, path: str) -> None:
        self.integer(value, path, 1, self.limits.max_image_side)

    def channels(self, value: Any, path: str) -> None:
        self.integer(value, path, 1, self.limits.max_channels)

    def image(self, value: Any, path: str) -> None:
        self.obj(value, path, {"channels": self.channels, "height": self.side, "width": self.side})

    def chw(self, value: Any, path: str) -> None:
        self.array(value, path, 3)
        self.channels(value[0], f"{path}[0]")
        self.side(value[1], f"{path}[1]")
        self.side(value[2], f"{path}[2]")

    def bases(self, value: Any, path: str) -> None:
        self.obj(
            value,
            path,
            {
                "count": lambda x, q: self.integer(x, q, 1),
                "per_class": self.per_class,
                "shape": self.chw,
            },
        )

    def per_class(self, value: Any, path: str) -> None:
        self.array(value, path, len(self.manifest["classes"]))
        for i, n in enumerate(value):
            self.integer(n, f"{path}[{i}]")

    def stage(self, value: Any, path: str) -> None:
        self.obj(
            value,
            path,
            {
                "name": self.text,
                "version": lambda v, p: self.integer(v, p, 1),
                "configuration": self.free_object,
            },
        )

    def pipeline(self, value: Any, path: str) -> None:
        self.array(value, path)
        if len(value) > self.limits.max_stages:
            raise self.fail(path, f"has {len(value)} stages, allowed {self.limits.max_stages}")
        for i, entry in enumerate(value):
            self.stage(entry, f"{path}[{i}]")

    def float_list(self, value: Any, path: str, positive: bool) -> None:
        self.array(value, path, self.manifest["image"]["channels"])
        for i, x in enumerate(value):
            if positive:
                self.number(x, f"{path}[{i}]", positive=True)
            else:
                self.signed_number(x, f"{path}[{i}]")

    def normalization(self, value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise self.fail(path, f"must be an object, got {_kind(value)}")
        kind = self.choice(value.get("kind"), f"{path}.kind", ("none", "mean-std", "zca"))
        fields: dict[str, Callable[[Any, str], Any]] = {"kind": lambda v, p: None}
        if kind in ("mean-std", "zca"):
            fields["mean"] = lambda v, p: self.float_list(v, p, positive=False)
            fields["std"] = lambda v, p: self.float_list(v, p, positive=True)
        if kind == "zca":
            fields["eps"] = lambda v, p: self.number(v, p, positive=True)
        self.obj(value, path, fields)

    def learned_lr(self, value: Any, path: str) -> None:
        if value is not None:
            self.number(value, path, positive=True)

    def training(self, value: Any, path: str) -> None:
        self.obj(value, path, {"learned_lr": self.learned_lr, "recommended": self.recommended})

    def recommended(self, value: Any, path: str) -> None:
        self.obj(
            value,
            path,
            {
                "arch": self.text,
                "epochs": lambda x, q: self.integer(x, q, 1),
                "batch_size": lambda x, q: self.integer(x, q, 1),
                "lr": lambda x, q: self.number(x, q, positive=True),
                "momentum": self.number,
                "weight_decay": self.number,
                "augmentation": self.text,
            },
            {
                # Fraction of the epochs after which the lr drops ×0.1 (the protocol: 0.5);
                # 1 means it never drops. The evaluation protocol refuses anything above 1.
                "lr_decay_at": self.fraction,
                # The knowledge-distillation recipe (SPEC §3): absent means cross-entropy,
                # SGD and the step schedule, as every archive before them.
                "loss": lambda x, q: self.choice(x, q, ("ce", "kd")),
                "temperature": lambda x, q: self.number(x, q, positive=True),
                "optimizer": lambda x, q: self.choice(x, q, ("sgd", "adamw")),
                "schedule": lambda x, q: self.choice(x, q, ("step", "cosine")),
                "crop_scale": self.fraction,
                "teacher": self.recipe_teacher,
            },
        )

    def recipe_teacher(self, value: Any, path: str) -> None:
        # The teacher file a recipe needs at training time (online distillation).
        self.obj(
            value,
            path,
            {
                "name": self.text,
                "sha256": lambda v, p: self.pattern(v, p, _HEX64_RE, "64 lowercase hex digits"),
                "bytes": lambda v, p: self.integer(v, p, 1),
            },
        )

    def provenance(self, value: Any, path: str) -> None:
        self.obj(
            value,
            path,
            {
                "dataset": lambda v, p: self.obj(
                    v, p, {"name": self.text, "fingerprint": self.digest}
                ),
                "objective": self.text,
                "hyperparameters": self.free_object,
                "iterations": self.integer,
                "seed": lambda v, p: self.integer(v, p, 0, 2**64 - 1),
                "library": self.text,
                "created": self.created,
            },
            {"teacher": self.teacher} if self.minor >= LABELS_MINOR else None,
        )

    def created(self, value: Any, path: str) -> None:
        text = self.pattern(value, path, _CREATED_RE, "a UTC time like 2026-11-24T12:00:00Z")
        _calendar_date(self, text, path)

    def storage(self, value: Any, path: str) -> None:
        self.obj(
            value,
            path,
            {
                "ipc": lambda v, p: self.integer(v, p, 1),
                "counts": lambda v, p: self.choice(v, p, ("all", "bases")),
                "budget_values": self.integer,
            },
        )

    def tensor_entry(self, value: Any, path: str) -> None:
        self.obj(
            value,
            path,
            {
                "dtype": self.text,
                "shape": lambda v, p: [
                    self.integer(d, f"{p}[{i}]") for i, d in enumerate(self.array(v, p))
                ],
                "sha256": lambda v, p: self.pattern(v, p, _HEX64_RE, "64 lowercase hex digits"),
            },
        )

    def tensors(self, value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise self.fail(path, f"must be an object, got {_kind(value)}")
        if len(value) > self.limits.max_tensors:
            raise self.fail(path, f"lists {len(value)} tensors, allowed {self.limits.max_tensors}")
        for name, entry in value.items():
            self.tensor_entry(entry, f"{path}[{quote(name)}]")

    def digest(self, value: Any, path: str) -> None:
        self.pattern(value, path, _DIGEST_RE, "'sha256:' and 64 hex digits")


def _layout(m: dict[str, Any], c: _Checker, stages: StageLookup) -> Layout:
    """Cross-field rules, and the tensors the manifest implies."""
    lim = c.limits
    n_classes = len(m["classes"])
    count = m["bases"]["count"]
    per_class = tuple(m["bases"]["per_class"])
    if sum(per_class) != count:
        raise c.fail("bases.per_class", f"sums to {sum(per_class)}, but bases.count is {count}")
    image = (m["image"]["channels"], m["image"]["height"], m["image"]["width"])
    base_shape = tuple(m["bases"]["shape"])
    image_values = _prod(image)

    budget = budget_values(m["storage"]["ipc"], n_classes, image)
    if m["storage"]["budget_values"] != budget:
        raise c.fail(
            "storage.budget_values",
            f"is {m['storage']['budget_values']}, but ipc x classes x C*H*W = {budget}",
        )

    out_shape, expansion, params, stored = describe(m["pipeline"], base_shape, stages)
    if stored.minor > c.minor:
        raise c.fail(
            "pipeline",
            f"needs format 1.{stored.minor} (its stages are newer than 1.{c.minor}); the "
            f"archive says {m['format_version']}",
        )
    if stored.classes is not None and stored.classes != n_classes:
        raise c.fail(
            "pipeline",
            f"decodes per class for {stored.classes} classes, but the archive has {n_classes}",
        )
    expected: dict[str, tuple[str, tuple[int, ...]]] = {
        "bases": (stored.dtypes.get("bases", "F32"), (count, *stored.base_shape))
    }
    # hard: I64 (count,); soft: F32 (count, classes), or a 1.3 form's tensors
    expected.update(label_tensors(m["labels"], count, n_classes))
    if m["normalization"]["kind"] == "zca":
        if image_values > lim.max_zca_dim:
            raise c.fail(
                "normalization",
                f"a ZCA matrix of dimension {image_values} exceeds the limit {lim.max_zca_dim}",
            )
        expected["normalization.zca"] = ("F32", (image_values, image_values))

    for name, shape in params.items():
        if _prod(shape) > lim.max_stage_params:
            raise c.fail(
                "pipeline",
                f"parameter {quote(name)} has {_prod(shape)} values, "
                f"allowed {lim.max_stage_params}",
            )
        expected[name] = (stored.dtypes.get(name, "F32"), shape)
    if len(expected) > lim.max_tensors:
        raise c.fail("pipeline", f"implies {len(expected)} tensors, allowed {lim.max_tensors}")
    if out_shape != image:
        raise c.fail(
            "pipeline",
            f"decodes bases {list(base_shape)} to {list(out_shape)}, "
            f"but the image shape is {list(image)}",
        )
    expanded_values = count * expansion * image_values
    if expanded_values > lim.max_expanded_values:
        raise c.fail(
            "pipeline",
            f"expands {count} bases x {expansion} variants to {expanded_values} values, "
            f"more than the limit {lim.max_expanded_values} (expansion bomb?)",
        )
    # 1.4: one view (box, mirror flag, label) per training item per stored epoch.
    crops = crop_tensors(m["labels"], count * expansion, n_classes)
    crop_values = sum(_prod(shape) for _, shape in crops.values())
    if crop_values > lim.max_expanded_values:
        raise c.fail(
            "labels.crops",
            f"implies {crop_values} stored values, more than the limit {lim.max_expanded_values}",
        )
    expected.update(crops)
    return Layout(
        tensors=expected,
        classes=n_classes,
        per_class=per_class,
        label_kind=m["labels"]["kind"],
        image_shape=image,
        expansion=expansion,
        expanded_items=count * expansion,
        rules={
            **stored.rules,
            **label_rules(m["labels"], n_classes),
            **crop_rules(m["labels"], n_classes),
        },
    )


def _strip_ignorable(entry: Mapping[str, Any]) -> dict[str, Any]:
    # Codecs validate their own configuration; 'x-' keys are ignorable everywhere,
    # so they are removed before a codec sees them.
    configuration = {k: v for k, v in entry["configuration"].items() if not k.startswith("x-")}
    return {"name": entry["name"], "version": entry["version"], "configuration": configuration}


@dataclass(frozen=True)
class Stored:
    """How a pipeline stores its tensors: dtypes other than F32 (by tensor name), the
    shape of one stored basis, and the lowest format 1.x that has its stages."""

    dtypes: dict[str, str]
    base_shape: tuple[int, ...]
    minor: int
    classes: int | None = None  # a per-class stage's class count (a per-class mask)
    rules: Mapping[str, Callable[[Any], str | None]] = field(default_factory=dict)


def describe(
    pipeline: list[dict[str, Any]], base_shape: tuple[int, ...], stages: StageLookup
) -> tuple[tuple[int, ...], int, dict[str, tuple[int, ...]], Stored]:
    """(out_shape, expansion, params, stored) of a validated pipeline, as ``stages``
    describes it."""
    if not pipeline:  # a raw archive needs no codec
        return tuple(base_shape), 1, {}, Stored({}, tuple(base_shape), 0)
    entries = [_strip_ignorable(e) for e in pipeline]
    try:
        spec = stages(entries, tuple(base_shape))
        out_shape = tuple(int(d) for d in spec.out_shape)
        expansion = int(spec.expansion)
        params = {str(k): tuple(int(d) for d in v) for k, v in spec.params.items()}
        # A lookup without these fields (an older or a test one) stores everything as F32.
        packed = getattr(spec, "stored_base_shape", None) or base_shape
        stored = Stored(
            {str(k): str(v) for k, v in (getattr(spec, "dtypes", None) or {}).items()},
            tuple(int(d) for d in packed),
            int(getattr(spec, "minor", 0)),
            getattr(spec, "classes", None),
            dict(getattr(spec, "rules", None) or {}),
        )
    except Exception as error:  # hostile configurations must not escape as raw errors
        raise _stage_error(entries, base_shape, error, stages) from None
    if expansion < 1:
        raise ArchiveError(f"manifest: pipeline: expansion {expansion} is not positive")
    return out_shape, expansion, params, stored


def _stage_error(
    entries: list[dict[str, Any]],
    base_shape: tuple[int, ...],
    error: Exception,
    stages: StageLookup,
) -> ArchiveError:
    """Name the stage the error is about: the index a codec error carries (habactl's
    registry checks every stage's place before any configuration, so a misplaced stage
    is named for its place, format/SPEC.md §3.2), else the first stage whose prefix of the
    pipeline fails to describe (a registry that names no index)."""
    index = getattr(error, "index", None)
    if not (isinstance(index, int) and 0 <= index < len(entries)):
        index = len(entries) - 1
        for i in range(len(entries)):
            try:
                stages(entries[: i + 1], tuple(base_shape))
            except Exception as prefix_error:
                index, error = i, prefix_error
                break
    name = entries[index]["name"]
    # Codec errors are HabaErrors with a ``detail``; anything else is a bug worth naming.
    detail = (
        (getattr(error, "detail", None) or str(error))
        if isinstance(error, HabaError)
        else f"{type(error).__name__}: {error}"
    )
    return ArchiveError(f"manifest: pipeline[{index}] (stage {quote(name)}): {detail}")
