"""How quantize, frequency, upsample and hallucinate compose: every order that makes sense
round-trips through an archive; the planner refuses the others, naming why."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

import habactl.cli.compress  # noqa: F401  (registers the commands)
import habactl.cli.verify  # noqa: F401  (two commands: the app keeps its subcommands)
from habactl.cli.app import app
from habactl.codecs.pipeline import Pipeline, basis_classes
from habactl.distill.archive import write_haba
from habactl.distill.engine import DistillConfig, pipeline_entries
from habactl.distill.errors import DistillError
from habactl.distill.planner import base_shape_for, plan_pipeline
from habactl.format import open_archive, storage_account
from habactl.format.normalization import mean_std
from habactl.training.dataset import HabaDataset
from helpers import fake_source, one_error_line

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
SHAPE, CLASSES = (1, 8, 8), 3

U = {"name": "upsample", "version": 1, "configuration": {"factor": 2, "mode": "bilinear"}}
H = {
    "name": "hallucinate",
    "version": 1,
    "configuration": {"arch": "channel-affine", "count": 2, "hidden": 3, "kernel": 3},
}
Q = {"name": "quantize", "version": 1, "configuration": {"dtype": "uint8"}}
F4 = {"name": "frequency", "version": 1, "configuration": {"height": 4, "keep": 5, "width": 4}}
F8 = {"name": "frequency", "version": 1, "configuration": {"height": 8, "keep": 5, "width": 8}}

FIRST_QUANTIZE = "stage 'quantize' stores the bases themselves: it must be the first stage"
LEADING_FREQUENCY = (
    "stage 'frequency' decodes the stored coefficients: it must be the first stage, "
    "or follow a first quantize stage"
)
REFUSED = {  # pipeline -> (the stage refused, its reason)
    "frequency after upsample": ([U, F4], 1, LEADING_FREQUENCY),
    "frequency after hallucinate": ([H, F8], 1, LEADING_FREQUENCY),
    "frequency after quantize and upsample": ([Q, U, F4], 2, LEADING_FREQUENCY),
    "two frequency stages": ([F8, F8], 1, LEADING_FREQUENCY),
    "quantize after frequency": ([F8, Q], 1, FIRST_QUANTIZE),
    "quantize after upsample": ([U, Q], 1, FIRST_QUANTIZE),
    "quantize after hallucinate": ([H, Q], 1, FIRST_QUANTIZE),
    "two quantize stages": ([Q, Q], 1, FIRST_QUANTIZE),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_the_planner_refuses_a_misplaced_stage_for_its_place(case):
    pipeline, index, reason = REFUSED[case]
    with pytest.raises(DistillError) as caught:
        plan_pipeline(pipeline, SHAPE, CLASSES, 2)
    message = str(caught.value)
    assert f"pipeline[{index}]: {reason}" in message and "\n" not in message


def test_a_recipe_with_a_misplaced_stage_is_one_clear_error(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        'objective = "dm"\n'
        '[[pipeline]]\nname = "upsample"\nversion = 1\n'
        "[pipeline.configuration]\nfactor = 2\n"
        '[[pipeline]]\nname = "frequency"\nversion = 1\n'
        "[pipeline.configuration]\nheight = 4\nkeep = 5\nwidth = 4\n"
    )
    out = tmp_path / "x.haba"
    args = ["compress", "digits", "-o", str(out), "--config", str(recipe), "-q"]
    line = one_error_line(runner.invoke(app, [*args, "--iterations", "1"]))
    assert LEADING_FREQUENCY in line and "pipeline[1]" in line
    assert not out.exists()


ALLOWED = {  # what `compress --codec C [--frequency K [--frequency-mask M]] [--quantize D]` builds
    "raw+frequency": ("raw", 5, "shared", None),
    "idc+frequency": ("idc", 5, "shared", None),
    "haba+frequency-per-class": ("haba", 6, "per-class", None),
    "haba+idc+frequency": ("haba+idc", 5, "shared", None),
    "idc+frequency+uint8": ("idc", 5, "shared", "uint8"),
    "haba+idc+frequency-per-class+uint4": ("haba+idc", 7, "per-class", "uint4"),
    "haba+frequency+bfloat16": ("haba", 5, "shared", "bfloat16"),
    "haba+idc+float16": ("haba+idc", None, "shared", "float16"),
    "idc+uint8": ("idc", None, "shared", "uint8"),
}


@pytest.mark.parametrize("case", sorted(ALLOWED))
def test_every_sensible_order_round_trips_through_an_archive(tmp_path, case):
    codec, keep, mask, dtype = ALLOWED[case]
    config = DistillConfig(
        codec=codec, frequency=keep, frequency_mask=mask, quantize=dtype, hallucinators=2
    )
    entries = pipeline_entries(config, SHAPE, CLASSES)
    names = [e["name"] for e in entries]
    assert names[: bool(dtype)] == ["quantize"][: bool(dtype)]
    assert ("frequency" in names) == (keep is not None)
    plan = plan_pipeline(entries, SHAPE, CLASSES, 2)
    assert plan.stored_bytes <= plan.budget_bytes
    base_shape = base_shape_for(entries, SHAPE)
    generator = torch.Generator().manual_seed(len(case))
    pipeline = Pipeline.from_manifest(entries, base_shape, generator=generator, noise=0.1)
    classes = torch.arange(CLASSES).repeat_interleave(2)
    frequency = next((s for s in pipeline.stage_list if s.name == "frequency"), None)
    if frequency is not None:
        images = torch.randn(12, 1, *frequency.out_shape[1:], generator=generator)
        frequency.fit(images, torch.arange(12) % CLASSES)
    bases = torch.randn(6, *base_shape, generator=generator)
    path = write_haba(
        tmp_path / "c.haba",
        source=fake_source(SHAPE, CLASSES),
        bases=bases,
        labels=classes,
        pipeline=pipeline,
        normalization=mean_std([0.5], [0.25]),
        objective="random",
        hyperparameters={},
        iterations=0,
        seed=0,
        ipc=2,
    )
    with open_archive(path) as archive:
        manifest = archive.manifest
    assert [e["name"] for e in manifest["pipeline"]] == names
    assert manifest["format_version"] == "1.2"
    account = storage_account(manifest)
    # What the planner counts per basis and for the stages is what the archive stores.
    assert account.counted_bytes == 6 * plan.basis_bytes + plan.pipeline_bytes
    images, labels = HabaDataset(path).tensors()
    with torch.no_grad():
        stored = pipeline.encode_bases(bases)
        expected = pipeline.decode_all(stored, classes=basis_classes([2] * CLASSES))
    torch.testing.assert_close(images, expected, atol=1e-5, rtol=0)
    assert images.shape == (6 * pipeline.expansion, *SHAPE)
    assert labels.tolist() == classes.repeat_interleave(pipeline.expansion).tolist()
