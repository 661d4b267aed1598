"""Crash, then rerun: a killed run never blocks the next one; concurrent runs compute entries once.

These run the real `winnow` command in subprocesses against the session's Prefect server, kill it
with SIGKILL on its process group (what the OOM killer or a lost node does), and rerun it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from storage import DatasetStore
from storage.locks import EntryLock, entry_lock

REPO = Path(__file__).resolve().parents[1]
WINNOW = str(Path(sys.executable).with_name("winnow"))


def _env() -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    return dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value())


def _start(store: Path, log: Path) -> subprocess.Popen:
    with open(log, "w") as f:
        return subprocess.Popen([WINNOW, "run", "--profile", "smoke", "--store", str(store), "--json"], cwd=REPO,
                                env=_env(), stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def _outputs(log: Path) -> dict[str, str]:
    text = log.read_text()
    return json.loads(text[text.index("{\n"):])["outputs"]


def _wait_for(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


def _computed(store: Path) -> list[str]:
    return [e["stage"] for e in DatasetStore(store).journal_events() if e["event"] == "computed"]


@pytest.fixture(scope="module")
def concurrent_pair(tmp_path_factory, prefect_server):
    """Two runs started at once on one empty store (their fingerprints are also the kill test's truth)."""
    work = tmp_path_factory.mktemp("concurrent")
    procs = [_start(work / "store", work / f"run{k}.log") for k in range(2)]
    codes = [p.wait(timeout=400) for p in procs]
    return work, codes


def test_two_concurrent_runs_compute_each_entry_once(concurrent_pair):
    work, codes = concurrent_pair
    assert codes == [0, 0], (work / "run0.log").read_text()[-2000:]
    a, b = (_outputs(work / f"run{k}.log") for k in range(2))
    assert a == b
    store = DatasetStore(work / "store")
    events = store.journal_events()
    computed = Counter(e["fingerprint"] for e in events if e["event"] == "computed")
    # the benchmark index is contamination's parent, not a run output
    index = {m.fingerprint for m in store.entries() if m.stage == "contamination_index"}
    assert len(index) == 1
    assert set(computed) == set(a.values()) | index and set(computed.values()) == {1}


def test_kill_9_mid_stage_then_rerun_finishes_with_the_same_fingerprints(concurrent_pair, tmp_path):
    truth = _outputs(concurrent_pair[0] / "run0.log")
    killed = tmp_path / "killed"
    proc = _start(killed, tmp_path / "killed.log")
    # Kill while label_noise holds its entry lock: the state that hung every later run before.
    _wait_for(lambda: "contamination" in _computed(killed), timeout=300)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    store = DatasetStore(killed)
    assert all(store.verify(m.fingerprint) == [] for m in store.entries())  # nothing partial is visible

    rerun = subprocess.run([WINNOW, "run", "--profile", "smoke", "--store", str(killed), "--json"], cwd=REPO,
                           env=_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert json.loads(rerun.stdout)["outputs"] == truth
    # The rerun recomputed only what the killed run had not committed.
    assert Counter(_computed(killed))["dedup"] == 1


def test_a_lock_held_by_a_killed_process_is_free_at_once(tmp_path):
    code = ("import time; from storage.locks import EntryLock;"
            f"l = EntryLock({str(tmp_path)!r}, 'ab'); l.acquire('test'); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    assert not EntryLock(tmp_path, "ab").try_acquire()
    proc.kill()
    proc.wait()
    lock = EntryLock(tmp_path, "ab")
    assert lock.try_acquire()
    lock.release()


def test_a_waiting_writer_says_whom_it_waits_for_and_times_out(tmp_path):
    messages: list[str] = []
    with entry_lock(tmp_path, "cd", "dedup cd"):
        with pytest.raises(TimeoutError, match="still locked by pid"):
            EntryLock(tmp_path, "cd").acquire("dedup cd", timeout=0.5, on_wait=messages.append)
    assert messages and f"pid {os.getpid()}" in messages[0] and "dedup cd" in messages[0]


def test_store_clean_removes_only_what_dead_processes_left(tmp_path):
    store = DatasetStore(tmp_path / "s")
    live = store.scratch_dir()  # owned by this (live) process
    code = f"from storage import DatasetStore; DatasetStore({str(tmp_path / 's')!r}).scratch_dir()"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)  # its owner exits at once
    (tmp_path / "s" / "prefect-locks").mkdir()
    (tmp_path / "s" / "prefect-locks" / "x.lock").write_text('{"expiration": null}')
    removed = store.clean()
    assert len(removed["staging"]) == 1 and live.exists()
    assert len(removed["legacy_locks"]) == 1 and not (tmp_path / "s" / "prefect-locks").exists()


def test_store_verify_finds_a_damaged_table(tmp_path):
    import pyarrow as pa

    store = DatasetStore(tmp_path / "s")
    store.put(fingerprint="ef" * 32, stage="t", params={}, code_version="c", parents={},
              tables={"data": pa.table({"id": [str(i) for i in range(1000)]})})
    assert store.verify("ef" * 32) == []
    path = store.table_path("ef" * 32)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert store.verify("ef" * 32)
