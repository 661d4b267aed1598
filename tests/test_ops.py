"""Operations: deployment runs with a profile, a store and a config overlaid on winnow.toml;
`winnow deploy`'s run commands; stage names that resolve from the pipeline head.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage import DatasetStore
from winnow.cli import main
from winnow.config import load_config

REPO = Path(__file__).resolve().parents[1]


def test_flow_parameters_resolve_like_the_cli(tmp_path, monkeypatch):
    """defaults < profile < ./winnow.toml < config overlay < store, the same function as --set."""
    (tmp_path / "winnow.toml").write_text('[dedup]\nthreshold = 0.85\nkeep = "longest"\n[train]\nlr = 0.002\n')
    monkeypatch.chdir(tmp_path)
    from flows.pipeline import _config

    cfg = _config({"dedup": {"threshold": 0.9}, "train.max_steps": 7}, "smoke", str(tmp_path / "s"))
    assert cfg.params("dedup").threshold == 0.9 and cfg.params("dedup").keep == "longest"
    assert cfg.params("train").lr == 0.002 and cfg.params("train").max_steps == 7
    assert cfg.params("train").d_model == 64  # from the smoke profile
    assert cfg.store.root == str(tmp_path / "s")
    cli = load_config(None, "smoke", ["dedup.threshold=0.9", "train.max_steps=7"], store=str(tmp_path / "s"))
    assert cli.to_dict() == cfg.to_dict()
    from winnow.errors import WinnowError

    with pytest.raises(WinnowError, match="unknown key 'dedup.treshold'"):
        _config({"dedup": {"treshold": 0.9}})


def test_deploy_lists_every_deployment_with_its_exact_run_command(capsys):
    assert main(["deploy", "--profile", "smoke", "--store", "/tmp/nightly", "--set", "dedup.threshold=0.9"]) == 0
    out = capsys.readouterr().out
    assert "nightly/nightly  (cron '0 2 * * *' UTC)" in out
    assert "stage_label_noise/label_noise" in out and "train_and_evaluate/train_and_evaluate" in out
    assert ("prefect deployment run stage_dedup/dedup -p profile=smoke -p store=/tmp/nightly "
            "-p 'config={\"dedup\": {\"threshold\": 0.9}}'") in out


def _wait_for(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float = 90) -> subprocess.CompletedProcess:
    """Retry ``cmd`` until it succeeds (a served deployment takes a few seconds to register)."""
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
        if done.returncode == 0 or time.monotonic() > deadline:
            return done
        time.sleep(2)


@pytest.mark.usefixtures("prefect_server")
def test_served_deployment_run_takes_profile_store_and_overlaid_config(tmp_path):
    """A real deployment (flow.serve) run by `prefect deployment run -p ...` writes to that store
    with the overlay's threshold and the working directory's winnow.toml for everything else."""
    from prefect.settings import PREFECT_API_URL

    work = tmp_path / "work"
    work.mkdir()
    (work / "winnow.toml").write_text('[dedup]\nkeep = "longest"\n')
    store = tmp_path / "nightly-store"
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(REPO),
           "PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    prefect = str(Path(sys.executable).with_name("prefect"))
    server = subprocess.Popen(
        [sys.executable, "-c", "from flows.pipeline import dedup_flow; dedup_flow.serve(name='dedup')"],
        env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        done = _wait_for([prefect, "deployment", "run", "stage_dedup/dedup", "-p", "profile=smoke",
                          "-p", f"store={store}", "-p", 'config={"dedup": {"threshold": 0.9}}',
                          "--watch", "--watch-timeout", "120"], env, work, timeout=60)
        assert done.returncode == 0 and "Completed" in done.stdout, done.stdout + done.stderr
    finally:
        server.terminate()
        server.wait(timeout=30)
    record = DatasetStore(store).run_record("latest")
    dedup = DatasetStore(store).manifest(record["outputs"]["dedup"])
    assert dedup.params["threshold"] == 0.9
    assert record["config"]["train"]["d_model"] == 64  # the smoke profile
    assert dedup.params["keep"] == "longest"  # the run's working directory's winnow.toml
