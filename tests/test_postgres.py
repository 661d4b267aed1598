"""PostgreSQL mode: deployments/postgres.sh starts Debian's postgresql on 127.0.0.1 as the Prefect
server's database, and 8 concurrent flow runs of a served winnow deployment complete on it.

Slow (several minutes on 2 shared cores: 8 flow-run processes), so `-m slow`; skipped, saying why,
where PostgreSQL's binaries are not installed.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from localserver import api, free_port, wait_healthy
from storage import DatasetStore

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "deployments" / "postgres.sh"
HAS_PG = bool(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not HAS_PG, reason="PostgreSQL is not installed (apt-get install postgresql)")]
RUNS = 8


def test_eight_concurrent_flow_runs_complete_on_postgres():
    # Not under pytest's tmp folder: as root the database runs as `postgres`, which must reach it.
    base = Path(tempfile.mkdtemp(prefix="winnow-pg-"))
    base.chmod(0o755)
    pg_env = {**os.environ, "WINNOW_PG_DIR": str(base / "pg"), "WINNOW_PG_PORT": str(free_port())}
    started = subprocess.run([str(SCRIPT), "start"], env=pg_env, capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stderr
    url = started.stdout.strip().split("=", 1)[1].strip("'")
    assert url.startswith("postgresql+asyncpg://") and "127.0.0.1" in url
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(base / "home"), "PREFECT_API_URL": base_url,
           "PREFECT_API_DATABASE_CONNECTION_URL": url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false", "PYTHONPATH": str(REPO), "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    prefect = str(Path(sys.executable).with_name("prefect"))
    server = subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    served = None
    try:
        wait_healthy(base_url, server)
        store = base / "store"
        served = subprocess.Popen(
            [sys.executable, "-c", f"from flows.pipeline import dedup_flow; dedup_flow.serve(name='dedup', limit={RUNS})"],
            env=env, cwd=base, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not api(base_url, "/deployments/filter", {}):
            assert time.monotonic() < deadline and served.poll() is None, "the deployment never registered"
            time.sleep(1)
        dep = api(base_url, "/deployments/filter", {})[0]
        ids = [api(base_url, f"/deployments/{dep['id']}/create_flow_run",
                    {"parameters": {"profile": "smoke", "store": str(store)}})["id"] for _ in range(RUNS)]
        deadline = time.monotonic() + 900
        while True:
            runs = api(base_url, "/flow_runs/filter", {"flow_runs": {"id": {"any_": ids}}})
            states = sorted(r["state_type"] for r in runs)
            if all(s in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for s in states):
                break
            assert time.monotonic() < deadline, f"runs still going after 15 min: {states}"
            time.sleep(3)
        assert states == ["COMPLETED"] * RUNS, states
        # Were they concurrent? Their running intervals overlap (8 processes at once).
        spans = sorted((r["start_time"], r["end_time"]) for r in runs)
        assert spans[-1][0] < spans[0][1], "the runs ran one after another, not concurrently"
        s = DatasetStore(store)
        dedups = [m for m in s.entries() if m.stage == "dedup"]
        assert len(dedups) == 1  # the same deterministic entry from every run
        # A stage deployment forces its stage, so each run recomputed dedup, one at a time on its lock.
        computed = [e for e in s.journal_events() if e.get("event") == "computed" and e.get("stage") == "dedup"]
        assert len(computed) == RUNS, computed
    finally:
        for proc in (served, server):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)
        subprocess.run([str(SCRIPT), "stop"], env=pg_env, capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)
