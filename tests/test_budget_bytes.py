"""The budget in bytes: the planner, the storage account, `inspect` and `--budget-bytes`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import habactl.cli.compress  # noqa: F401  (registers the command)
import habactl.cli.inspect_cmd  # noqa: F401
from habactl.cli.app import app
from habactl.distill.errors import DistillError
from habactl.distill.planner import plan_budget, plan_pipeline, preset_pipeline
from habactl.format import open_archive, storage_account
from helpers import one_error_line

runner = CliRunner()
MNIST = (1, 28, 28)
DIGITS = (1, 8, 8)
TINY = ["--iterations", "2", "--real-per-class", "4", "--contrast-batch", "8", "-q"]


@pytest.mark.parametrize("codec", ["raw", "idc", "haba", "haba+idc"])
@pytest.mark.parametrize("ipc", [2, 10])
def test_ipc_is_its_float32_bytes_and_plans_as_before(codec, ipc):
    by_ipc = plan_budget(codec, MNIST, 10, ipc)
    assert by_ipc.budget_bytes == 4 * by_ipc.budget_values == ipc * 10 * 784 * 4
    # The same budget given in bytes plans the same bases.
    entries = preset_pipeline(codec)
    by_bytes = plan_pipeline(entries, MNIST, 10, 1, budget_bytes=by_ipc.budget_bytes)
    assert by_bytes.per_class == by_ipc.per_class and by_bytes.ipc == ipc
    assert by_ipc.stored_bytes == 4 * by_ipc.stored_values <= by_ipc.budget_bytes
    # Float32 plans record no byte figures in provenance (archives stay byte-identical).
    assert "budget_bytes" not in by_ipc.describe()
    assert by_bytes.describe()["budget_bytes"] == by_ipc.budget_bytes


def test_a_byte_budget_between_ipcs_buys_what_it_pays_for():
    # 1.5 float32 images per class of 8x8 digits: 10 x 64 x 4 x 1.5 = 3840 bytes.
    plan = plan_pipeline([], DIGITS, 10, 1, budget_bytes=3840, leftover="bases")
    assert plan.bases == 15 and plan.stored_bytes == 15 * 256 <= 3840
    assert plan.ipc == 2  # the smallest IPC whose budget holds 3840 bytes
    assert "--budget-bytes" in plan.summary() and "3,840-byte budget" in plan.summary()
    with pytest.raises(DistillError, match=r"budget too small: --budget-bytes 2,559.*bytes"):
        plan_pipeline([], DIGITS, 10, 1, budget_bytes=2559)


def _compress(tmp_path, *args):
    out = tmp_path / "a.haba"
    result = runner.invoke(app, ["compress", "digits", "-o", str(out), *args, *TINY])
    return out, result


def test_budget_bytes_on_the_command_line(tmp_path):
    out, result = _compress(tmp_path, "--codec", "raw", "--budget-bytes", "3840")
    assert result.exit_code == 0, result.output
    with open_archive(out) as archive:
        manifest = archive.manifest
    account = storage_account(manifest)
    assert sum(manifest["bases"]["per_class"]) == 15
    assert account.counted_bytes == 15 * 64 * 4 <= 3840
    assert manifest["storage"]["ipc"] == 2 and account.budget_bytes == 2 * 10 * 64 * 4
    assert manifest["provenance"]["hyperparameters"]["budget"]["budget_bytes"] == 3840
    both = runner.invoke(
        app, ["compress", "digits", "-o", str(tmp_path / "b.haba"), "--ipc", "2",
              "--budget-bytes", "4000", *TINY]
    )  # fmt: skip
    assert both.exit_code != 0 and "--ipc or as --budget-bytes" in one_error_line(both)
    small = runner.invoke(
        app, ["compress", "digits", "-o", str(tmp_path / "c.haba"), "--budget-bytes", "100", *TINY]
    )
    assert small.exit_code != 0 and "budget too small" in one_error_line(small)
    assert not (tmp_path / "b.haba").exists() and not (tmp_path / "c.haba").exists()


def test_account_and_inspect_show_bytes_and_the_byte_ratio(tmp_path):
    out, result = _compress(tmp_path, "--codec", "haba", "--ipc", "2")
    assert result.exit_code == 0, result.output
    with open_archive(out) as archive:
        account = storage_account(archive.manifest)
    parts = account.parts
    assert parts["bases"].bytes == 4 * parts["bases"].values > 0
    assert parts["hallucinators"].bytes == 4 * parts["hallucinators"].values > 0
    assert account.counted_bytes == parts["bases"].bytes + parts["hallucinators"].bytes
    assert account.ratio_bytes == pytest.approx(account.counted_bytes / (2 * 10 * 64 * 4))
    shown = runner.invoke(app, ["inspect", str(out)])
    assert shown.exit_code == 0, shown.output
    assert f"{account.counted_bytes:,}" in shown.stdout
    assert f"{account.budget_bytes:,}" in shown.stdout
    assert f"{account.ratio_bytes:.2f}×" in shown.stdout
    data = json.loads(runner.invoke(app, ["inspect", str(out), "--json"]).stdout)
    assert data["account"]["ratio_bytes"] == pytest.approx(account.ratio_bytes)
