"""The side-by-side benchmark cannot rot: ``bench/run_all.py --quick`` runs every
workload of this engine (enqueue one by one and in bulk, processing with two
worker children, start latency at 100 jobs/s, the raw claim loops and the
PostgreSQL start latency floor) at a tiny
size on SQLite and PostgreSQL, through this interpreter (the project's .venv),
and writes its JSON. No assertion on speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_postgres

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
QUICK_SYSTEMS = {"dartwing-sqlite", "dartwing-postgresql", "ceiling-postgresql",
                 "ceiling-sqlite"}
OUR_METRICS = {"enqueue_one_by_one_per_s", "enqueue_bulk_per_s", "process_per_s",
               "start_latency_p50_ms", "start_latency_p99_ms", "worker_rss_end_kib"}


@pytest.mark.timeout(120)
def test_run_all_quick_writes_results(tmp_path: Path) -> None:
    require_postgres()
    proc = subprocess.run(
        [sys.executable, "bench/run_all.py", "--quick", "--results-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr[-4000:]
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1, files
    doc = json.loads(files[0].read_text())
    assert {"meta", "systems", "ratios", "targets", "table_markdown"} <= set(doc)
    assert doc["meta"]["quick"] is True
    assert doc["meta"]["repeat"] == 1
    assert set(doc["systems"]) == QUICK_SYSTEMS
    for name, system in doc["systems"].items():
        assert len(system["runs"]) == 1, (name, system["errors"])
        for stats in system["summary"].values():
            assert stats["min"] <= stats["median"] <= stats["max"]
    for name in ("dartwing-sqlite", "dartwing-postgresql"):
        assert set(doc["systems"][name]["summary"]) >= OUR_METRICS, name
    for name in ("ceiling-postgresql", "ceiling-sqlite"):
        assert {"loop_1_per_tx_per_s", "loop_50_per_tx_per_s"} <= set(
            doc["systems"][name]["summary"]), name
    # The PostgreSQL ceiling's start latency is the floor of a durable start.
    assert {"start_latency_p50_ms", "start_latency_p99_ms"} <= set(
        doc["systems"]["ceiling-postgresql"]["summary"])
    ours = doc["ratios"]["dartwing-postgresql"]["process_per_s"]
    assert ours["vs_ours_postgresql"] == pytest.approx(1.0)
    assert ours["vs_ceiling_50_per_tx"] > 0
    assert len(doc["targets"]) == 6
    assert "| dartwing-jobs | PostgreSQL |" in doc["table_markdown"]
    assert doc["table_markdown"] in proc.stdout


@pytest.mark.timeout(120)
def test_fairness_claim_bench_writes_results(tmp_path: Path) -> None:
    """``bench/fairness_bench.py``'s claim part at a tiny size: every setup (one
    organization, many submitted by organization and interleaved, unfair) claims
    and serves what it should, and the ratios are written."""
    require_postgres()
    proc = subprocess.run(
        [sys.executable, "bench/fairness_bench.py", "--skip-delay", "--claim-orgs", "20",
         "--claim-per-org", "10", "--claims", "2", "--rounds", "2",
         "--results-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (path,) = tmp_path.glob("fairness-*.json")
    doc = json.loads(path.read_text())
    claims = doc["claims"]
    assert [(c["organizations"], c["submitted"], c["fair_claiming"]) for c in claims] == [
        (1, "by organization", True), (20, "by organization", True),
        (20, "interleaved", True), (1, "by organization", False)]
    for setup in claims:
        assert setup["claimed"] == 2 * 100  # one claim of 100 a turn, two turns
        assert len(setup["jobs_per_s_by_round"]) == 2
    # A claim of 100 from 20 organizations of 10 jobs takes every one of them.
    assert claims[1]["organizations_served"] == claims[2]["organizations_served"] == 20
    for key in ("many_to_one_by_round", "many_to_one_by_round_interleaved"):
        assert doc[key]["min"] > 0 and doc[key]["max"] < 100, doc[key]
    assert "median of the turns' ratios" in proc.stdout
