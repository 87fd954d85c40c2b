"""`compress --objective dd` under `torchrun --nproc-per-node 2` (gloo on this CPU): every
rank trains a network of its own on the synthetic set each iteration, and the logged loss
is the mean of the ranks' losses (N networks per iteration, as DD's ``sample_n_nets``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import needs_torchrun, run_habactl

pytestmark = [pytest.mark.slow, needs_torchrun, pytest.mark.usefixtures("one_thread")]

SETTINGS = {"inner_steps": 2, "real_per_class": 4, "net_width": 0.125, "learn_labels": True}
RECIPE = 'objective = "dd"\ncodec = "idc"\niterations = 2\nthreads = 1\n\n[settings]\n' + "".join(
    f"{k} = {json.dumps(v)}\n" for k, v in SETTINGS.items()
)


def test_dd_on_two_ranks_logs_the_mean_of_their_losses(tmp_path: Path):
    from habactl.data import load_source
    from habactl.distill import DistillConfig, Distiller
    from habactl.distill.engine import stream
    from habactl.format import open_archive

    (tmp_path / "dd.toml").write_text(RECIPE)
    done = run_habactl("compress", "digits", "--config", "dd.toml", "-q", "-o", "two.haba",
                   "--log-file", "two.jsonl", cwd=tmp_path, world=2, timeout=180)  # fmt: skip
    assert done.returncode == 0, done.stderr
    with open_archive(tmp_path / "two.haba") as archive:
        manifest = archive.manifest
    assert manifest["provenance"]["hyperparameters"]["world_size"] == 2
    assert manifest["labels"]["kind"] == "soft"
    log = [json.loads(line) for line in (tmp_path / "two.jsonl").read_text().splitlines()]
    logged = [r["dd"] for r in log if r["event"] == "iteration"]
    assert len(logged) == 2

    config = DistillConfig(
        objective="dd", codec="idc", iterations=2, augment="none", objective_settings=SETTINGS
    )
    distiller = Distiller(load_source("digits"), config)
    losses = [
        float(
            distiller.objective.loss(
                distiller.synthetic, stream(0, f"objective/rank-{r}/iteration-0")
            )[0].detach()
        )
        for r in range(2)
    ]
    assert logged[0] == pytest.approx(sum(losses) / 2, rel=1e-5)
    assert losses[0] != pytest.approx(losses[1], rel=1e-4)  # two networks, not one twice
