"""bench/scale.py --quick end to end on its array set (the folder and ImageNet-shaped sets
run the same stages on other generators; they are left to the benchmark for time): the
set is generated and prepared at a positive rate, every stage from the store and from
memory is measured, and so is the teacher-driven paradigm (teacher, sre2l, relabel, KD
evaluation) on the same store; the JSON parses, and nothing is left behind in the work folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# the data-size stages and the teacher-driven paradigm's, in one run
STAGES = "prepare,compress,evaluate,experts,in-memory,teacher,sre2l,relabel,evaluate-kd"


@pytest.mark.slow
def test_quick_run_prints_prepare_rates_and_reports_every_stage(tmp_path):
    work = tmp_path / "work"
    out = tmp_path / "scale.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scale.py"), "--quick", "--sets", "tiny"]
        + ["--stages", STAGES, "--workdir", str(work), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(out.read_text())
    assert payload["machine"]["cores"] >= 1 and payload["machine"]["cpu"]
    rows = payload["rows"]

    prepares = {r["set"]: r for r in rows if r["stage"] == "prepare"}
    assert set(prepares) == {"tiny"}
    for row in prepares.values():
        assert row["status"] == "ok", row
        assert row["img_per_s"] > 0 and row["peak_rss_mib"] > 0
    # The table on stdout has the same prepare rows, with the rate in its column.
    table = [line.split() for line in result.stdout.splitlines()]
    printed = {cells[0]: cells for cells in table if len(cells) > 4 and cells[1] == "prepare"}
    assert set(printed) == set(prepares)
    for name, cells in printed.items():
        assert float(cells[4].replace(",", "")) > 0, (name, cells)

    # Start-up is its own row; every stage after it is measured or says why it failed.
    assert rows[0]["set"] == "-" and rows[0]["status"] == "ok" and rows[0]["peak_rss_mib"] > 0
    stages = {r["stage"] for r in rows}
    assert {"compress haba+idc", "experts", "compress haba+idc (in memory)"} <= stages
    assert {"teacher", "sre2l haba+idc", "relabel", "evaluate-kd"} <= stages
    assert any(r["stage"].startswith("evaluate") for r in rows)
    for row in rows:
        assert row["status"] == "ok", row
        assert row["seconds"] > 0 and row["peak_rss_mib"] > 0, row
        if row["stage"].startswith(("compress", "sre2l")):
            assert row["s_per_it"] is not None and row["s_per_it"] > 0, row
    # Generated data, stores and archives are removed at the end.
    assert list(work.iterdir()) == []
