"""The pure side of the codecs: stage configurations, shapes and parameter shapes.

Nothing here imports torch, so the format reader can validate a manifest (and
`habactl inspect` can describe an archive) without loading it. The stage modules
(`upsample.py`, `hallucinate.py`) add the torch code that decodes; their `describe`
is the function of the same stage here.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from habactl.codecs.errors import CodecError, quote
from habactl.format.account import DTYPE_SIZES  # torch-free: bytes per element
from habactl.format.manifest import MANIFEST_DIGEST_MINOR

Shape = tuple[int, int, int]

# Far above any real image side (the format allows 4096), low enough that shape
# arithmetic in describe() can never produce absurd numbers from a hostile manifest.
MAX_SIDE = 1 << 16
MAX_CHANNELS = 4096

_REQUIRED = object()

# A content rule of one stored tensor: its values (a numpy array) -> the problem, or None.
# Pure numpy, so `habactl verify` (and the writer) check a stage's stored values without
# building the stage: a hostile archive is named there, not only when it is decoded.
ValueRule = Callable[[Any], "str | None"]


class StageSpec(NamedTuple):
    """What a stage will do, computed without allocating anything."""

    name: str
    version: int
    configuration: dict[str, Any]  # normalised: defaults filled in, `x-` keys kept
    in_shape: Shape
    out_shape: Shape
    expansion: int  # outputs per input: 1, or the number of hallucinators
    params: dict[str, tuple[int, ...]]  # parameter name -> shape
    # Stored dtypes (safetensors names): of the parameters not in float32, and of the
    # stage's input when it is the first stage (the `bases` tensor). Only `quantize`
    # stores anything but float32.
    param_dtypes: dict[str, str] | None = None
    input_dtype: str = "F32"
    # A stage that decodes each basis through its class's tensors (a per-class frequency
    # mask) names the number of classes it has them for; the archive must have as many.
    classes: int | None = None


def check_shape(stage: str, shape: Any, what: str = "input shape") -> Shape:
    """A (C, H, W) of positive Python ints within the sanity bounds."""
    if not isinstance(shape, Sequence) or isinstance(shape, (str, bytes)) or len(shape) != 3:
        raise CodecError(f"stage {quote(stage)}: {what} must be (C, H, W), got {quote(shape)}")
    out = []
    for i, d in enumerate(shape):
        if isinstance(d, bool) or not isinstance(d, int):
            raise CodecError(f"stage {quote(stage)}: {what} must hold integers, got {quote(shape)}")
        bound = MAX_CHANNELS if i == 0 else MAX_SIDE
        if not 1 <= d <= bound:
            raise CodecError(
                f"stage {quote(stage)}: {what} {list(shape)} is out of range "
                f"(channels 1..{MAX_CHANNELS}, sides 1..{MAX_SIDE})"
            )
        out.append(int(d))
    return (out[0], out[1], out[2])


class ConfigReader:
    """Reads one stage configuration key by key; `finish()` rejects what was not read.

    Unknown keys are fatal unless they start with ``x-`` (vendor keys, kept as they are).
    Integers must be JSON integers: a bool or a float is refused, not coerced.
    """

    def __init__(self, stage: str, configuration: Any) -> None:
        if not isinstance(configuration, Mapping):
            raise CodecError(
                f"stage {quote(stage)}: configuration must be an object, "
                f"got {type(configuration).__name__}"
            )
        for key in configuration:
            if not isinstance(key, str):
                raise CodecError(
                    f"stage {quote(stage)}: configuration key {quote(key)} is not a string"
                )
        self.stage = stage
        self.source = configuration
        self.out: dict[str, Any] = {}

    def _fail(self, key: str, message: str) -> CodecError:
        return CodecError(f"stage {quote(self.stage)}: configuration {quote(key)} {message}")

    def _get(self, key: str, default: Any) -> Any:
        if key in self.source:
            return self.source[key]
        if default is _REQUIRED:
            raise self._fail(key, "is required")
        return default

    def integer(
        self, key: str, low: int, high: int, default: Any = _REQUIRED, odd: bool = False
    ) -> int:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(key, f"must be an integer, got {quote(value)}")
        if not low <= value <= high:
            raise self._fail(key, f"must be {low}..{high}, got {value}")
        if odd and value % 2 == 0:
            raise self._fail(key, f"must be odd, got {value}")
        self.out[key] = int(value)
        return int(value)

    def choice(self, key: str, options: Sequence[str], default: Any = _REQUIRED) -> str:
        value = self._get(key, default)
        if not isinstance(value, str) or value not in options:
            raise self._fail(key, f"must be one of {', '.join(options)}; got {quote(value)}")
        self.out[key] = value
        return value

    def finish(self) -> dict[str, Any]:
        for key, value in self.source.items():
            if key.startswith("x-"):
                self.out[key] = copy.deepcopy(value)
            elif key not in self.out:
                raise self._fail(key, "is not a known key (vendor keys start with 'x-')")
        return dict(sorted(self.out.items()))


# --- upsample (IDC) ------------------------------------------------------------------

UPSAMPLE_MODES = ("bilinear", "nearest", "bicubic")
# The upsample stage's option defaults (its `Stage.options`), torch-free as above.
UPSAMPLE_DEFAULTS: dict[str, Any] = {"factor": 2, "mode": "bilinear"}
UPSAMPLE_MAX_FACTOR = 16


def describe_upsample(configuration: Any, in_shape: Any) -> StageSpec:
    """(C, h, w) -> (C, h·f, w·f); no parameters, expansion 1."""
    reader = ConfigReader("upsample", configuration)
    factor = reader.integer("factor", 1, UPSAMPLE_MAX_FACTOR)
    reader.choice("mode", UPSAMPLE_MODES, default=UPSAMPLE_DEFAULTS["mode"])
    config = reader.finish()
    c, h, w = check_shape("upsample", in_shape)
    if h * factor > MAX_SIDE or w * factor > MAX_SIDE:
        raise CodecError(
            f"stage 'upsample': output sides {h * factor}x{w * factor} exceed {MAX_SIDE}"
        )
    return StageSpec("upsample", 1, config, (c, h, w), (c, h * factor, w * factor), 1, {})


# --- hallucinate (HaBa) --------------------------------------------------------------

HALLUCINATE_ARCHS = ("pixel-affine", "channel-affine")
# The hallucinate stage's option defaults (its `Stage.options`), here without torch so
# that the planner, DistillConfig and the command line read the same values.
HALLUCINATE_DEFAULTS: dict[str, Any] = {
    "arch": "channel-affine",
    "count": 5,
    "hidden": 3,
    "kernel": 3,
}
HALLUCINATE_MAX_COUNT = 4096
HALLUCINATE_MAX_HIDDEN = 256
HALLUCINATE_MAX_KERNEL = 7


def describe_hallucinate(configuration: Any, in_shape: Any) -> StageSpec:
    """(C, H, W) -> (C, H, W) through one of `count` hallucinators; expansion `count`."""
    reader = ConfigReader("hallucinate", configuration)
    arch = reader.choice("arch", HALLUCINATE_ARCHS)
    count = reader.integer("count", 1, HALLUCINATE_MAX_COUNT)
    hidden = reader.integer(
        "hidden", 1, HALLUCINATE_MAX_HIDDEN, default=HALLUCINATE_DEFAULTS["hidden"]
    )
    k = reader.integer(
        "kernel", 1, HALLUCINATE_MAX_KERNEL, default=HALLUCINATE_DEFAULTS["kernel"], odd=True
    )
    config = reader.finish()
    c, h, w = check_shape("hallucinate", in_shape)
    if k > h or k > w:
        raise CodecError(
            f"stage 'hallucinate': kernel {k} is larger than the input "
            f"{c}x{h}x{w} (the encoder does not pad)"
        )
    affine = (
        (count, hidden, h - k + 1, w - k + 1) if arch == "pixel-affine" else (count, hidden, 1, 1)
    )
    params = {
        "encoder.weight": (count, hidden, c, k, k),
        "encoder.bias": (count, hidden),
        "scale": affine,
        "shift": affine,
        "decoder.weight": (count, hidden, c, k, k),  # ConvTranspose layout: (in=hidden, out=C)
        "decoder.bias": (count, c),
    }
    return StageSpec("hallucinate", 1, config, (c, h, w), (c, h, w), count, params)


# --- quantize (format 1.1) -----------------------------------------------------------

# dtype -> (the stored tensor's safetensors dtype, values per stored element, levels);
# levels is None for the float dtypes, which have no scale and no zero-point.
QUANTIZE_DTYPES: dict[str, tuple[str, int, int | None]] = {
    "float16": ("F16", 1, None),
    "bfloat16": ("BF16", 1, None),  # the top 16 bits of a float32: its range, 8-bit mantissa
    "uint8": ("U8", 1, 256),
    "uint4": ("U8", 2, 16),  # two 4-bit codes per byte along the width, low nibble first
}
QUANTIZE_GRANULARITY = ("tensor", "channel")


def describe_quantize(configuration: Any, in_shape: Any) -> StageSpec:
    """(C, H, W) stored at lower precision -> (C, H, W) float32; expansion 1.

    Integer codes carry a float32 ``scale`` and ``zero_point`` per tensor (shape (1,))
    or per channel (shape (C,)): value = (code - zero_point) * scale.
    """
    reader = ConfigReader("quantize", configuration)
    dtype = reader.choice("dtype", tuple(QUANTIZE_DTYPES))
    granularity = reader.choice("granularity", QUANTIZE_GRANULARITY, default="tensor")
    config = reader.finish()
    c, h, w = check_shape("quantize", in_shape)
    stored, _, levels = QUANTIZE_DTYPES[dtype]
    if levels is None and granularity != "tensor":
        raise CodecError(
            f"stage 'quantize': granularity 'channel' applies to the integer dtypes "
            f"(uint8, uint4), not {dtype}, which has no scale"
        )
    n = c if granularity == "channel" else 1
    params: dict[str, tuple[int, ...]] = (
        {} if levels is None else {"scale": (n,), "zero_point": (n,)}
    )
    return StageSpec("quantize", 1, config, (c, h, w), (c, h, w), 1, params, None, stored)


def quantize_rules(spec: StageSpec, index: int) -> dict[str, ValueRule]:
    """The stored values codecs/quantize.md requires: a positive scale, a zero-point
    that is one of the codes (a whole number in 0..L-1), a zero padding nibble in
    odd-width uint4 rows."""
    _, per, levels = QUANTIZE_DTYPES[spec.configuration["dtype"]]
    rules: dict[str, ValueRule] = {}
    if levels is None:
        return rules
    top = levels - 1

    def positive(scale: Any) -> str | None:
        return None if bool((scale > 0).all()) else "must be positive (a quantisation step)"

    def among_codes(zero: Any) -> str | None:
        inside = bool(((zero >= 0) & (zero <= top)).all())
        if not inside:
            return f"must lie in 0..{top} (a zero-point is a code)"
        # Stored as F32, but a code: 2.5 would shift every value by half a step.
        whole = bool((zero == zero.round()).all())
        return None if whole else f"must hold whole numbers in 0..{top} (a zero-point is a code)"

    def padding(packed: Any) -> str | None:
        clean = not bool((packed[..., -1] >> 4).any())
        return None if clean else "the padding nibble of an odd-width uint4 row is not 0"

    rules[f"pipeline.{index}.scale"] = positive
    rules[f"pipeline.{index}.zero_point"] = among_codes
    if per == 2 and spec.in_shape[2] % 2 and index == 0:
        rules["bases"] = padding
    return rules


def quantize_stored_shape(spec: StageSpec) -> Shape:
    """The shape one stored basis has: (C, H, ceil(W / codes per byte))."""
    _, per, _ = QUANTIZE_DTYPES[spec.configuration["dtype"]]
    c, h, w = spec.in_shape
    return (c, h, -(-w // per))


# --- frequency (FreD-style, format 1.1) ---------------------------------------------

FREQUENCY_MAX_VALUES = 1 << 20  # H x W of one channel: bounds the DCT matrices
FREQUENCY_MASKS = ("shared", "per-class")
FREQUENCY_MAX_CLASSES = 100_000  # the format's own bound on classes (Limits.max_classes)


def describe_frequency(configuration: Any, in_shape: Any) -> StageSpec:
    """(C, 1, keep) DCT coefficients -> (C, height, width) through the inverse 2-D DCT.

    The kept frequencies are the stored ``mask`` (U8, exactly ``keep`` ones per channel):
    one (C, height, width) mask shared by every basis, or with ``mask: "per-class"`` one
    per class, (classes, C, height, width), each basis decoded through its class's.
    Coefficient j of channel c goes to the j-th one of the mask in row-major order.
    """
    reader = ConfigReader("frequency", configuration)
    height = reader.integer("height", 1, MAX_SIDE)
    width = reader.integer("width", 1, MAX_SIDE)
    if height * width > FREQUENCY_MAX_VALUES:
        raise CodecError(
            f"stage 'frequency': {height}x{width} exceeds {FREQUENCY_MAX_VALUES} values"
        )
    keep = reader.integer("keep", 1, height * width)
    # "mask" is optional and absent from a shared mask's configuration as habactl writes
    # it, so every archive made before per-class masks existed keeps its bytes.
    shared = "mask" not in reader.source or reader.choice("mask", FREQUENCY_MASKS) == "shared"
    if shared and "classes" in reader.source:
        raise CodecError("stage 'frequency': configuration 'classes' applies to mask 'per-class'")
    classes = None if shared else reader.integer("classes", 1, FREQUENCY_MAX_CLASSES)
    config = reader.finish()
    c, one, k = check_shape("frequency", in_shape)
    if (one, k) != (1, keep):
        raise CodecError(
            f"stage 'frequency': input must be (C, 1, keep) = (C, 1, {keep}), got {[c, one, k]}"
        )
    mask = (c, height, width) if classes is None else (classes, c, height, width)
    return StageSpec(
        "frequency",
        1,
        config,
        (c, 1, keep),
        (c, height, width),
        1,
        {"mask": mask},
        {"mask": "U8"},
        classes=classes,
    )


def frequency_rules(spec: StageSpec, index: int) -> dict[str, ValueRule]:
    """The stored mask codecs/frequency.md requires: 0 or 1, `keep` ones per channel."""
    keep = spec.configuration["keep"]

    def mask_rule(mask: Any) -> str | None:
        if bool((mask > 1).any()):
            return "a frequency mask holds values other than 0, 1"
        counts = mask.reshape(*mask.shape[:-2], -1).sum(-1)
        wrong = list(zip(*(counts != keep).nonzero()))
        if not wrong:
            return None
        where = ", ".join(str(int(i)) for i in wrong[0])  # (channel) or (class, channel)
        return (
            f"a frequency mask must keep exactly {keep} coefficients per channel; "
            f"[{where}] keeps {int(counts[wrong[0]])}"
        )

    return {f"pipeline.{index}.mask": mask_rule}


# --- the registry of descriptions and whole pipelines --------------------------------


class Description(NamedTuple):
    """A stage's name, its newest version, its pure describe function, and where in a
    pipeline it may stand (what describe_pipeline reads instead of stage names)."""

    name: str
    version: int
    describe: Callable[[Any, Any], StageSpec]
    since_minor: int = 0  # the format 1.x that introduced the stage (writers emit >= it)
    first_only: bool = False  # reads the stored `bases` tensor itself: only stage 0
    # A stage that reads stored data but may sit behind a stage that only narrows it:
    # it must be stage 0 or follow a first stage named here (None: anywhere).
    leads_after: tuple[str, ...] | None = None
    why_placed: str = ""  # the reason given when it stands anywhere else
    # The shape one stored basis has when the stage is stage 0 and packs the bases.
    stored_shape: Callable[[StageSpec], Shape] | None = None
    # Content rules of the tensors it stores (by tensor name), for the stage at an index.
    value_rules: Callable[[StageSpec, int], dict[str, ValueRule]] | None = None


DESCRIPTIONS: dict[str, Description] = {
    d.name: d
    for d in (
        Description("upsample", 1, describe_upsample),
        Description("hallucinate", 1, describe_hallucinate),
        Description(
            "quantize",
            1,
            describe_quantize,
            since_minor=1,
            first_only=True,
            why_placed="stores the bases themselves",
            stored_shape=quantize_stored_shape,
            value_rules=quantize_rules,
        ),
        Description(
            "frequency",
            1,
            describe_frequency,
            since_minor=1,
            leads_after=("quantize",),
            why_placed="decodes the stored coefficients",
            value_rules=frequency_rules,
        ),
    )
}

ENTRY_KEYS = ("name", "version", "configuration")


class PipelineSpec(NamedTuple):
    """What a pipeline decodes to, computed without allocating anything."""

    stages: list[StageSpec]
    out_shape: Shape
    expansion: int
    params: dict[str, tuple[int, ...]]  # "pipeline.{i}.{param}" -> shape
    # Tensors not stored in float32 ("bases" and "pipeline.{i}.{param}") -> dtype; the
    # shape one stored basis has (the bases shape unless the first stage packs it); the
    # lowest format 1.x that can hold the pipeline.
    dtypes: dict[str, str] | None = None
    stored_base_shape: Shape | None = None
    minor: int = 0
    # The classes a per-class stage decodes for (None: no stage needs a basis' class).
    classes: int | None = None
    # Content rules of stored tensors beyond SPEC §2's (tensor name -> rule).
    rules: dict[str, ValueRule] | None = None


def stages_minor(pipeline: Any) -> int:
    """The lowest format minor version 1.x that has every stage of `pipeline`: 0, or 1
    with a stage of 1.1 (unknown names count as 1.0; validation names them)."""
    minor = 0
    for entry in pipeline if isinstance(pipeline, (list, tuple)) else ():
        name = entry.get("name") if isinstance(entry, Mapping) else None
        if isinstance(name, str) and name in DESCRIPTIONS:
            minor = max(minor, DESCRIPTIONS[name].since_minor)
    return minor


def format_version_for(pipeline: Any) -> str:
    """The format version habactl writes for `pipeline`: "1.2" (the manifest digest),
    or a later 1.x should a stage need one."""
    # Every archive written since format 1.2 carries a manifest digest (format/SPEC.md §7).
    return f"1.{max(MANIFEST_DIGEST_MINOR, stages_minor(pipeline))}"


def legacy_format_version_for(pipeline: Any) -> str:
    """The version habactl wrote for `pipeline` before 1.2, the lowest that has its
    stages ("1.0", or "1.1" with a stage of 1.1); only for reproducing old archives."""
    return f"1.{stages_minor(pipeline)}"


def get_description(name: Any) -> Description:
    """The description registered under `name`; CodecError for an unknown name."""
    if isinstance(name, str) and name in DESCRIPTIONS:
        return DESCRIPTIONS[name]
    raise CodecError(f"unknown stage {quote(name)} (known: {', '.join(sorted(DESCRIPTIONS))})")


def describe_entry(entry: Any, in_shape: Any) -> StageSpec:
    """Validate one `{"name", "version", "configuration"}` entry and describe its stage."""
    if not isinstance(entry, Mapping):
        raise CodecError(f"a pipeline entry must be an object, got {type(entry).__name__}")
    for key in entry:
        if not isinstance(key, str) or (key not in ENTRY_KEYS and not key.startswith("x-")):
            raise CodecError(
                f"pipeline entry key {quote(key)} is not known (vendor keys start with 'x-')"
            )
    for key in ENTRY_KEYS:
        if key not in entry:
            raise CodecError(f"pipeline entry lacks {quote(key)}")
    stage = get_description(entry["name"])
    version = entry["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CodecError(
            f"stage {quote(stage.name)}: version must be a positive integer, got {quote(version)}"
        )
    if version > stage.version:
        raise CodecError(
            f"stage {quote(stage.name)} version {version} is newer than this habactl "
            f"supports ({stage.version}); upgrade habactl to read it"
        )
    return stage.describe(entry["configuration"], in_shape)


def describe_pipeline(pipeline: Any, base_shape: Any) -> PipelineSpec:
    """Validate a manifest pipeline and report shapes, expansion and parameter shapes.

    Pure: nothing is allocated, so the format reader can check tensor shapes and the
    expanded size against its limits before reading a byte of tensor data.
    """
    if not isinstance(pipeline, (list, tuple)):
        raise CodecError(f"the pipeline must be a list, got {type(pipeline).__name__}")
    shape = check_shape("pipeline", base_shape, "base shape")
    stages: list[StageSpec] = []
    params: dict[str, tuple[int, ...]] = {}
    expansion = 1
    stored_shape, minor = shape, 0
    dtypes: dict[str, str] = {}
    classes: int | None = None
    rules: dict[str, ValueRule] = {}
    # Order first: a stage in the wrong place is refused for that, not for a shape.
    check_order(pipeline)
    for i, entry in enumerate(pipeline):
        try:
            spec = describe_entry(entry, shape)
        except CodecError as error:
            raise CodecError(error.detail, index=i) from None
        described = DESCRIPTIONS[spec.name]
        minor = max(minor, described.since_minor)
        if i == 0 and spec.input_dtype != "F32":
            dtypes["bases"] = spec.input_dtype
            if described.stored_shape is not None:
                stored_shape = described.stored_shape(spec)
        if spec.classes is not None:
            classes = spec.classes
        if described.value_rules is not None:
            rules.update(described.value_rules(spec, i))
        for name, dtype in (spec.param_dtypes or {}).items():
            dtypes[f"pipeline.{i}.{name}"] = dtype
        if spec.expansion > 1 and expansion > 1:
            raise CodecError(
                f"at most one stage may expand the data set (stage {quote(spec.name)} "
                f"would multiply {expansion} by {spec.expansion})",
                index=i,
            )
        expansion *= spec.expansion
        stages.append(spec)
        params.update({f"pipeline.{i}.{name}": s for name, s in spec.params.items()})
        shape = spec.out_shape
    return PipelineSpec(
        stages, shape, expansion, params, dtypes, stored_shape, minor, classes, rules
    )


def check_order(pipeline: Sequence[Any]) -> None:
    """Every stage stands where it may (its Description's ``first_only`` and
    ``leads_after``), judged from the names alone: the planner asks this before it walks
    shapes back, so a misplaced stage is refused for its place, whatever its sizes.
    Unknown names and malformed entries are left to ``describe_entry`` to name."""
    names = [e.get("name") if isinstance(e, Mapping) else None for e in pipeline]
    for i, name in enumerate(names):
        described = DESCRIPTIONS.get(name) if isinstance(name, str) else None
        if described is None or i == 0:
            continue
        if described.first_only:
            raise CodecError(
                f"stage {quote(described.name)} {described.why_placed}: it must be the "
                f"first stage of the pipeline",
                index=i,
            )
        if described.leads_after is not None and not (i == 1 and names[0] in described.leads_after):
            after = " or ".join(described.leads_after)
            raise CodecError(
                f"stage {quote(described.name)} {described.why_placed}: it must be the first "
                f"stage, or follow a first {after} stage",
                index=i,
            )


class Storage(NamedTuple):
    """Bytes one stored basis takes, and the bytes of every stage parameter together."""

    basis_bytes: int
    param_bytes: int


def param_dtype(spec: StageSpec, name: str) -> str:
    """The stored dtype of one parameter of a stage (float32 unless it says otherwise)."""
    return (spec.param_dtypes or {}).get(name, "F32")


def bases_dtype(spec: PipelineSpec) -> str:
    """The stored dtype of the `bases` tensor: the first stage's input dtype."""
    return spec.stages[0].input_dtype if spec.stages else "F32"


def pipeline_storage(spec: PipelineSpec, base_shape: Sequence[int]) -> Storage:
    """What the pipeline stores, in bytes: the budget planner's and the account's unit."""
    stored = spec.stored_base_shape or tuple(base_shape)
    basis = DTYPE_SIZES[bases_dtype(spec)] * math.prod(int(d) for d in stored)
    params = sum(
        DTYPE_SIZES[param_dtype(stage, name)] * math.prod(int(d) for d in shape)
        for stage in spec.stages
        for name, shape in stage.params.items()
    )
    return Storage(basis, params)
