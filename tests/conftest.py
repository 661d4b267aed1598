"""Shared fixtures: one Prefect server for the whole session, and paths to the bundled sample."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see winnow/cli.py
# Fixed BLAS/OpenMP thread counts, so results do not depend on machine load (see tasks/train.py).
os.environ.setdefault("MKL_DYNAMIC", "FALSE")
os.environ.setdefault("OMP_DYNAMIC", "FALSE")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# What `winnow run` sets too (winnow/cli.py). Here it also keeps Prefect's console handler from
# ever writing: it binds the sys.stderr of the test that first imports Prefect, and a later test in
# that worker would write to that test's closed capture stream (a RecursionError under log_prints).
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A real Prefect server on a temporary SQLite database, started once per test session.

    Heartbeats are off (each costs ~1 s per flow) and task results go to a fresh folder so no
    cache record from outside the test session can leak in.
    """
    from prefect.settings import (
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_LOCAL_STORAGE_PATH,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        with temporary_settings(
            updates={
                PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None,
                PREFECT_LOCAL_STORAGE_PATH: tmp_path_factory.mktemp("prefect-results"),
            }
        ):
            yield


def _sample(name: str) -> Path:
    path = SAMPLE / name
    if not path.exists():
        pytest.fail(f"bundled sample missing: {path} (run `python data/build_sample.py`)")
    return path


@pytest.fixture(scope="session")
def sample_corpus() -> Path:
    return _sample("corpus.parquet")


@pytest.fixture(scope="session")
def sample_benchmarks() -> Path:
    return _sample("benchmarks.parquet")
